"""What differs between the backends, on a real PostgreSQL: rows, who leads the reconcile
loop, and messages between controller processes (issue 15)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from controller.domain.jobs import NewJob, Requirements
from controller.errors import InvalidInput, StorageError
from controller.store import Store
from controller.store.channel import FORGET, WAKE, PostgresChannel
from controller.store.leader import PostgresLeadership
from tests.conftest import wait_until


def test_rows_answer_by_name_and_position_and_sums_are_numbers(postgres_server):
    store = Store(postgres_server.create_database())
    try:
        with pytest.raises(OverflowError):  # as SQLite: the API's 422, not a 404
            store.plans.get(2**63)
        with pytest.raises(InvalidInput, match="NUL"):  # SQLite holds it; never a 5xx here
            store.jobs.find(owner="a\x00b")
        with pytest.raises(StorageError, match="no_such_table"), store.read() as c:
            c.execute("SELECT * FROM no_such_table")  # the store's error, not psycopg's
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
        wait_until(lambda: len(heard["b"]) == 2, 5, 0.02, "b to hear both messages")
        # the server delivers in order: once a hears b's answer, an echo of its own would
        # have come before it
        b.send(WAKE, "9")
        wait_until(lambda: heard["a"], 5, 0.02, "a to hear b")
        assert sorted(heard["b"]) == [(FORGET, "pilot:p1"), (WAKE, "3")]
        assert heard["a"] == [(WAKE, "9")]
    finally:
        a.close()
        b.close()


def _columns_sqlite(store: Store) -> dict[str, set[str]]:
    tables = [r[0] for r in store.rows("SELECT name FROM sqlite_master WHERE type = 'table'"
                                       " AND name NOT LIKE 'sqlite_%'")]
    return {t: {r[1] for r in store.rows(f"PRAGMA table_info({t})")} for t in tables}


def _columns_postgres(store: Store) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for table, column in store.rows(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"):
        out.setdefault(table, set()).add(column)
    return out


def _indexes_sqlite(store: Store) -> set[str]:
    return {r[0] for r in store.rows("SELECT name FROM sqlite_master WHERE type = 'index'"
                                     " AND name NOT LIKE 'sqlite_autoindex_%'")}


def _indexes_postgres(store: Store) -> set[str]:
    return {r[0] for r in store.rows("SELECT indexname FROM pg_indexes"
                                     " WHERE schemaname = current_schema()"
                                     " AND indexname NOT LIKE '%_pkey'")}


def test_both_backends_make_the_same_tables_columns_and_indexes(postgres_server, tmp_path):
    """SQLite's migrations and PostgreSQL's baseline plus the shared migrations
    (store/migrations.py, store/schema_pg.py) end in one schema."""
    lite, pg = Store(tmp_path / "q.db"), Store(postgres_server.create_database())
    try:
        columns = _columns_postgres(pg)
        # PostgreSQL's own, on purpose (store/schema_pg.py): concurrent writers append to
        # pending tables that a trigger folds in at commit, each charge with its half-life
        assert {t: columns.pop(t) for t in ("held_pending", "usage_pending")}
        columns["usage"].remove("half_life")
        indexes = _indexes_postgres(pg) - {"idx_held_pending_xid", "idx_usage_pending_xid"}
        assert _columns_sqlite(lite) == columns
        assert _indexes_sqlite(lite) == indexes
    finally:
        lite.close()
        pg.close()


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


def test_a_stall_skips_a_job_another_process_is_moving(postgres_server):
    """Issue 26 (bench.chaos): the loop stalls a machine's jobs while another process is
    recording a pilot's report of one of them. The stall leaves that job alone (it is locked)
    and stalls the others, instead of failing on it and undoing them all."""
    import psycopg

    from controller.domain.jobs import JobState
    from tests.unit.test_store import match

    url = postgres_server.create_database()
    store = Store(url)
    try:
        store.tokens.create_user("alice", "physics")
        store.jobs.submit([NewJob("/bin/true")] * 2, "alice", "physics", 3)
        (a, _), (b, _) = match(store), match(store)
        with psycopg.connect(url) as other:  # the report's transaction, not yet committed
            other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (a.id,))
            moved = store.jobs.stall(machines=["m1"], why="machine lost")
        assert moved == [(b.id, JobState.WAITING)]
        assert store.jobs.get(a.id).state != JobState.WAITING
        assert store.jobs.stall(machines=["m1"], why="machine lost") == [
            (a.id, JobState.WAITING)]  # the next look
    finally:
        store.close()
