"""The Store: the database (SQLite, the embedded default, or PostgreSQL shared by several
controller processes) and the query modules that work on it (one per table group: jobs,
machines, endpoints, hosts, plans, ticks, tokens, usage)."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from controller.config.database import is_postgres
from controller.store.channel import FORGET, Channel, PostgresChannel
from controller.store.endpoints import EndpointStore
from controller.store.files import FileStore
from controller.store.hosts import HostStore
from controller.store.jobs import JobStore
from controller.store.leader import Leadership, PostgresLeadership
from controller.store.machines import MachineStore
from controller.store.migrations import migrate, migrate_postgres
from controller.store.plans import PlanStore
from controller.store.postgres import PostgresBackend
from controller.store.refusals import RefusalStore
from controller.store.runtimes import RunTimeStore
from controller.store.sql import Connection, Dialect
from controller.store.sqlite import SqliteBackend
from controller.store.ticks import TickStore
from controller.store.tokens import TokenStore
from controller.store.usage import UsageStore


class Store:
    """Owns the database. Every query module goes through `tx()` (a write transaction) or
    `read()`. `database` is a SQLite file's path or a `postgresql://` URL."""

    def __init__(self, database: str | Path, *, lease: float = 60.0) -> None:
        self.backend: SqliteBackend | PostgresBackend
        if is_postgres(str(database)):
            pg = PostgresBackend(str(database))
            try:
                with pg.pool.connection() as conn:
                    migrate_postgres(conn)
            except Exception:
                pg.close()
                raise
            self.backend, self.dialect = pg, Dialect.postgres()
        else:
            lite = SqliteBackend(database)
            try:
                with lite.lock:
                    migrate(lite.db)
            except sqlite3.Error as e:
                lite.db.conn.close()
                raise lite.open_error(e) from None
            self.backend, self.dialect = lite, Dialect.sqlite()
        self._channel: Channel = Channel()
        self.endpoints = EndpointStore(self)
        self.usage = UsageStore(self)
        self.runtimes = RunTimeStore(self)  # run-time history, for predictions
        self.tokens = TokenStore(self)
        self.jobs = JobStore(self, lease, self.usage, self.tokens)
        self.machines = MachineStore(self)
        self.plans = PlanStore(self)
        self.ticks = TickStore(self)
        self.hosts = HostStore(self)
        self.files = FileStore(self)  # issue 22: job files, input sandboxes, live output
        self.refusals = RefusalStore(self)  # issue 24: offers a cloud refused lately

    # several processes (PostgreSQL) ----------------------------------------------------------
    def channel(self) -> Channel:
        """Messages to and from the other controller processes sharing this database."""
        if isinstance(self.backend, PostgresBackend):
            self._channel = PostgresChannel(self.backend.url)
        return self._channel

    def leadership(self, lease: float = 30.0) -> Leadership:
        """Who runs the reconcile loop: with SQLite this process, with PostgreSQL the process
        holding the loop's advisory lock (for as long as it checks it within `lease`)."""
        if isinstance(self.backend, PostgresBackend):
            return PostgresLeadership(self.backend.url, lease=lease)
        return Leadership()

    def changed(self, what: str) -> None:
        """Something other processes may have cached changed ("users", "pilot:<id>"): tell
        them (their `forget` runs)."""
        self._channel.send(FORGET, what)

    def forget(self, what: str) -> None:
        """Drop what this process cached of `what` ("*": everything) because another process
        changed it."""
        if what in ("users", "*"):
            self.tokens.forget_shares()
        if what.startswith("pilot:"):
            self.machines.forget_pilot(what.removeprefix("pilot:"))
        if what == "*":
            self.machines.forget_pilot(None)

    def tx(self) -> AbstractContextManager[Connection]:
        """One write transaction. A tx() inside another (same thread) joins it: a service that
        calls several query methods in `with store.tx():` commits all of their writes, or
        none."""
        return self.backend.tx()

    def read(self) -> AbstractContextManager[Connection]:
        return self.backend.read()

    def close(self) -> None:
        self.backend.close()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one query in the store's SQL (for tests and tools)."""
        with self.read() as c:
            return list(c.execute(sql, params).fetchall())
