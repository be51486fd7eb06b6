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
