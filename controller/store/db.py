"""The Store: the database (SQLite, the embedded default, or PostgreSQL shared by several
controller processes) and the query modules that work on it (one per table group: jobs,
machines, endpoints, hosts, plans, ticks, tokens, usage)."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from controller.store.endpoints import EndpointStore
from controller.store.hosts import HostStore
from controller.store.jobs import JobStore
from controller.store.machines import MachineStore
from controller.store.migrations import migrate, migrate_postgres
from controller.store.plans import PlanStore
from controller.store.postgres import PostgresBackend, is_postgres
from controller.store.sql import Dialect
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
        self.endpoints = EndpointStore(self)
        self.usage = UsageStore(self)
        self.jobs = JobStore(self, lease, self.usage)
        self.machines = MachineStore(self)
        self.tokens = TokenStore(self)
        self.plans = PlanStore(self)
        self.ticks = TickStore(self)
        self.hosts = HostStore(self)

    @property
    def shared(self) -> bool:
        """Several controller processes may share this database (PostgreSQL)."""
        return isinstance(self.backend, PostgresBackend)

    def tx(self) -> AbstractContextManager[Any]:
        """One write transaction. A tx() inside another (same thread) joins it: a service that
        calls several query methods in `with store.tx():` commits all of their writes, or
        none."""
        return self.backend.tx()

    def read(self) -> AbstractContextManager[Any]:
        return self.backend.read()

    def close(self) -> None:
        self.backend.close()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one query in the store's SQL (for tests and tools)."""
        with self.read() as c:
            return list(c.execute(sql, params).fetchall())
