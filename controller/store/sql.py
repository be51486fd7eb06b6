"""Small SQL helpers shared by the store's modules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from controller.domain.jobs import HELD_STATES
from controller.errors import NotFound


@dataclass(frozen=True)
class Dialect:
    """What the query modules say differently to each backend. `claim` ends the SELECT that
    picks a waiting job to match: on PostgreSQL, rows another process is claiming are skipped,
    never waited for."""

    name: str
    claim: str = ""

    @property
    def shared(self) -> bool:
        """Several controller processes may write at once (PostgreSQL)."""
        return self.name == "postgres"

    @classmethod
    def sqlite(cls) -> Dialect:
        return cls("sqlite")  # one writer at a time (BEGIN IMMEDIATE): nothing to add

    @classmethod
    def postgres(cls) -> Dialect:
        return cls("postgres", claim=" FOR UPDATE SKIP LOCKED")


class Row(Protocol):
    """A row, whatever the backend: by column name and by position (`row["id"]`, `row[0]`),
    and `dict(row)`."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What a statement answers: its rows, and how many it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a query module holds inside `store.tx()` or `store.read()`, on either backend
    (SQLite's connection, or the PostgreSQL backend's translating one): statements in the
    store's SQL with `?` parameters."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Cursor: ...


class Transactions(Protocol):
    """What a query module needs of the Store (controller/store/db.py): a write transaction,
    a read, and the backend's dialect."""

    dialect: Dialect

    def changed(self, what: str) -> None: ...

    def tx(self) -> AbstractContextManager[Connection]: ...

    def read(self) -> AbstractContextManager[Connection]: ...


def one_row(c: Connection, missing: str, sql: str, *params: Any) -> Any:
    """The one row `sql` answers; NotFound(`missing`) when there is none."""
    row = c.execute(sql, params).fetchone()
    if row is None:
        raise NotFound(missing)
    return row


def in_list(states: Iterable[StrEnum]) -> str:
    """An SQL IN list made from a named set of states, e.g. "('booting', 'running')" (the
    values are the enums' own, never user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states)) + ")"


HELD = in_list(HELD_STATES)  # ('matched', 'running'): jobs a pilot holds; also the text of
# idx_jobs_active's WHERE, which a query must repeat to the letter for SQLite to use it
