"""What differs between the backends, on a real PostgreSQL: SQL translation, rows, who leads
the reconcile loop, and messages between controller processes (issue 15)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from controller.config.database import is_postgres, redact
from controller.config.settings import Settings
from controller.domain.jobs import NewJob, Requirements
from controller.errors import ConfigError, InvalidInput
from controller.store import Store
from controller.store.channel import FORGET, WAKE, PostgresChannel
from controller.store.leader import PostgresLeadership
from controller.store.postgres import translate
from tests.conftest import wait_until


def test_the_store_sql_is_translated_to_postgresql():
    assert translate("SELECT * FROM jobs WHERE id = ? AND name LIKE 'a%'") == (
        "SELECT * FROM jobs WHERE id = %s AND name LIKE 'a%%'")
    assert translate("SELECT SUM(json_extract(requirements, '$.cores')) FROM jobs") == (
        "SELECT SUM(CAST((requirements)::jsonb ->> 'cores' AS DOUBLE PRECISION)) FROM jobs")
    assert translate("SELECT COUNT(*) FROM jobs INDEXED BY idx_jobs_waiting WHERE x = ?") == (
        "SELECT COUNT(*) FROM jobs WHERE x = %s")


def test_database_settings_name_the_backend_and_never_show_a_password(tmp_path: Path):
    assert Settings(database=str(tmp_path / "q.db")).database_path == tmp_path / "q.db"
    url = "postgresql://cp:s3cret@db.example:5432/cloudpilot"
    s = Settings(database=url, workers=4)
    assert (s.database, s.database_path, s.workers) == (url, None, 4)
    assert is_postgres(url) and not is_postgres(str(tmp_path / "q.db"))
    assert redact(url) == "postgresql://cp:***@db.example:5432/cloudpilot"
    assert str(s.data_dir.resolve()) in s.controller_paths()
    with pytest.raises((ConfigError, ValueError), match="postgresql"):
        Settings.load(None, database=str(tmp_path / "q.db"), workers=2)


def test_rows_answer_by_name_and_position_and_sums_are_numbers(postgres_server):
    store = Store(postgres_server.create_database())
    try:
        with pytest.raises(OverflowError):  # as SQLite: the API's 422, not a 404
            store.plans.get(2**63)
        with pytest.raises(InvalidInput, match="NUL"):  # SQLite holds it; never a 5xx here
            store.jobs.find(owner="a\x00b")
        store.tokens.create_user("alice", "physics", share=2.5)
        (row,) = store.rows("SELECT name, grp, share FROM users")
        assert (row["name"], row[1], dict(row)) == (
            "alice", "physics", {"name": "alice", "grp": "physics", "share": 2.5})
        store.jobs.submit([NewJob("/bin/true", requirements=Requirements(cores=3))] * 2,
                          "alice", "physics", 3)
        (total,) = store.rows("SELECT SUM(json_extract(requirements, '$.cores')) FROM jobs")
        assert total[0] == 6  # a float, not a Decimal
        (held,) = store.rows("SELECT COUNT(*), SUM(retries + 2) FROM jobs")
        assert held == (2, 4) and isinstance(held[1], int)  # SUM of BIGINT: an int
    finally:
        store.close()


def test_one_process_leads_and_the_next_takes_over_when_it_goes(postgres_server):
    url = postgres_server.create_database()
    Store(url).close()  # the schema
    a, b = PostgresLeadership(url), PostgresLeadership(url)
    try:
        assert a.held() and a.epoch == 1
        assert not b.held()
        assert a.held()  # still ours: checked, not taken again
        a.close()  # its session ends (as when its process dies): the lock is free
        wait_until(b.held, 5, 0.05, "b to take the lead")  # the server ends a's session first
        assert b.epoch == 2
        assert not a.held()
    finally:
        a.close()
        b.close()


LEADER = """
import sys, time
from controller.store.leader import PostgresLeadership
lead = PostgresLeadership(sys.argv[1], lease=float(sys.argv[2]))
while True:  # a controller process's loop: check the lead, then a tick
    print(lead.held(), lead.epoch, flush=True)
    time.sleep(0.2)
"""


def test_a_leader_frozen_longer_than_its_lease_loses_the_lead(postgres_server, tmp_path):
    """Issue 26: a real process leads (checking its lock every 0.2 s), is frozen by SIGSTOP
    past its 2 s lease; the server ends its idle session, another takes the lead under the
    next epoch; resumed, the frozen one finds it is no longer the leader."""
    import os
    import signal
    import subprocess
    import sys

    url = postgres_server.create_database()
    Store(url).close()  # the schema (the leader table)
    out = tmp_path / "leader.out"
    with out.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-c", LEADER, url, "2"], stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    other = PostgresLeadership(url, lease=2)
    try:
        wait_until(lambda: "True 1" in out.read_text(), 20, what="the process to lead")
        assert not other.held()
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(other.held, 15, 0.2, "the other to take the lead")
        assert other.epoch == 2
        lines = len(out.read_text().splitlines())
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: len(out.read_text().splitlines()) > lines + 2, 10,
                   what="the resumed process to check again")
        after = out.read_text().splitlines()[lines:]
        assert after[-1] == "False 1", after  # it no longer leads, and knows it
        assert other.held() and other.epoch == 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        other.close()


def test_messages_reach_the_other_processes_and_not_their_sender(postgres_server):
    url = postgres_server.create_database()
    a, b = PostgresChannel(url), PostgresChannel(url)
    heard: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    arrived = threading.Event()

    def on(name: str):
        def handler(kind: str, arg: str) -> None:
            heard[name].append((kind, arg))
            arrived.set()
        return handler

    a.start(on("a"))
    b.start(on("b"))
    try:
        assert a.listening.wait(5) and b.listening.wait(5)
        a.send(WAKE, "3")
        a.send(FORGET, "pilot:p1")
        assert arrived.wait(5)
        deadline = threading.Event()
        deadline.wait(0.3)  # both messages, and nothing echoed to the sender
        assert sorted(heard["b"]) == [(FORGET, "pilot:p1"), (WAKE, "3")]
        assert heard["a"] == []
    finally:
        a.close()
        b.close()


def test_the_database_password_never_reaches_a_pilot_or_a_payload(tmp_path: Path, monkeypatch):
    from controller.drivers.local import pilot_env

    env = pilot_env({"PATH": "/usr/bin", "PGPASSWORD": "s3cret", "PGHOST": "db",
                     "CLOUDPILOT_DATABASE": "postgresql://cp:s3cret@db/cp",
                     "AWS_SECRET_ACCESS_KEY": "k", "OS_PASSWORD": "p", "LANG": "C.UTF-8"})
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("db:5432:cp:cp:s3cret\n")
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    s = Settings(database="postgresql://cp@db/cp", data_dir=tmp_path / "data")
    assert str(pgpass) in s.controller_paths()  # the sandbox hides it from payloads


def test_a_postgresql_dump_restores_and_the_restore_reschedules_what_ran(postgres_server,
                                                                       tmp_path):
    """Issue 26: on PostgreSQL, `admin backup` says to use pg_dump; a pg_dump of a live
    database restores (pg_restore) into a fresh one, and `admin restore --after-pg-restore`
    there reschedules the jobs held at the dump's time as interrupted. Jobs, tokens and
    machines are there."""
    import subprocess

    from controller.auth import Role
    from controller.domain.matching import SlotOffer
    from controller.errors import BackupError
    from controller.services import backups

    source = postgres_server.create_database()
    s = Store(source)
    s.tokens.create_user("alice", "physics")
    token = s.tokens.issue(Role.USER, owner="alice")
    ids = s.jobs.submit([NewJob("/bin/true", requirements=Requirements(cores=1))] * 3,
                        "alice", "physics", default_retries=2)
    s.machines.register_pilot("p1", "ep", "m1", 4, 4096, [], 4, "test")
    got = s.jobs.match("p1", "m1", SlotOffer("ep", 4, 4096), by="owner", shares={},
                       token_margin=60, count=2).jobs
    assert len(got) == 2
    with pytest.raises(BackupError, match="pg_dump"):
        backups.backup(source, tmp_path / "x.db")
    dump = tmp_path / "cloudpilot.dump"
    subprocess.run([str(postgres_server.bin / "pg_dump"), "-Fc", "--no-owner", "-f", str(dump),
                    source], check=True, capture_output=True, timeout=60)
    s.close()
    target = postgres_server.create_database()
    subprocess.run([str(postgres_server.bin / "pg_restore"), "--no-owner", "-d", target,
                    str(dump)], check=True, capture_output=True, timeout=60)
    with pytest.raises(BackupError, match="pg_restore"):
        backups.restore(target, None)  # not without saying the dump was restored
    moved = backups.restore(target, None, after_pg_restore=True)
    assert sorted(moved) == sorted(j.id for j, _ in got)
    r = Store(target)
    try:
        assert r.tokens.verify(token).owner == "alice"
        assert sorted(j.id for j in r.jobs.find(owner="alice")) == sorted(ids)
        assert {j.state.value for j in r.jobs.find(owner="alice")} == {"waiting"}
        assert all(r.jobs.get(j).reschedules == 1 and r.jobs.get(j).retries == 0
                   for j in moved)
        assert r.machines.get("m1").state.value == "running"
        # the sequences came along: a new job takes the next id
        (new,) = r.jobs.submit([NewJob("/bin/true")], "alice", "physics", default_retries=2)
        assert new > max(ids)
    finally:
        r.close()


def test_a_restore_takes_only_a_sound_cloudpilot_database_and_never_overwrites(tmp_path):
    from controller.errors import BackupError
    from controller.services import backups

    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackupError, match="not a cloudpilot database"):
        backups.restore(str(tmp_path / "new.db"), tmp_path / "junk.db")
    Store(tmp_path / "live.db").close()
    with pytest.raises(BackupError, match="exists already"):
        backups.restore(str(tmp_path / "live.db"), tmp_path / "live.db")
    with pytest.raises(BackupError, match="give the backup file"):
        backups.restore(str(tmp_path / "new.db"), None)
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "new.db.part").exists()
