"""The PostgreSQL backend (psycopg 3 and its connection pool): several controller processes,
on one machine or several, share one database.

The query modules write SQL once, in the dialect both backends read (`?` placeholders,
`json_extract(col, '$.key')`, `INSERT ... ON CONFLICT`, `RETURNING`); `translate()` turns it into
PostgreSQL's. Rows answer by name and by position, as sqlite3.Row does. What differs beyond
that is in `Dialect` (claims with FOR UPDATE SKIP LOCKED, row locks before read-modify-write)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool, PoolTimeout

from controller.config.database import redact
from controller.errors import CloudpilotError, InvalidInput, StorageBusy, StorageError

log = logging.getLogger("cloudpilot.store")

_JSON = re.compile(r"json_extract\(([\w.]+), '\$\.(\w+)'\)")
_INDEXED_BY = re.compile(r" INDEXED BY \w+")  # SQLite's index hint; PostgreSQL plans alone


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """The store's SQL in PostgreSQL's words: `?` -> `%s` (a literal % doubled),
    `json_extract(col, '$.key')` -> the number at that key of the JSON text in col (a
    float: read in C, where a NUMERIC is read in Python; the store converts it), and
    SQLite's `INDEXED BY` hints dropped."""
    sql = _INDEXED_BY.sub("", sql.replace("%", "%%"))
    sql = _JSON.sub(r"CAST((\1)::jsonb ->> '\2' AS DOUBLE PRECISION)", sql)
    return sql.replace("?", "%s")


_ROWS: dict[tuple[str, ...], type[tuple[Any, ...]]] = {}


def _row_class(names: tuple[str, ...]) -> type[tuple[Any, ...]]:
    """A tuple whose items answer by column name too, and `keys()` (so dict(row) works)."""
    cls = _ROWS.get(names)
    if cls is None:
        index = {n: i for i, n in enumerate(names)}
        get = tuple.__getitem__

        def __getitem__(self: tuple[Any, ...], k: Any) -> Any:
            return get(self, index[k]) if isinstance(k, str) else get(self, k)

        def keys(self: tuple[Any, ...]) -> list[str]:
            return list(names)

        cls = type("Row", (tuple,), {"__slots__": (), "__getitem__": __getitem__,
                                     "keys": keys})
        _ROWS[names] = cls
    return cls


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Any]:
    desc = cursor.description
    if desc is None:
        return tuple
    cls = _row_class(tuple(d.name for d in desc))
    return cls


class _Number(Loader):
    """NUMERIC (a SUM of integers, a number read out of JSON) as int when whole, else float,
    as SQLite answers them (never Decimal)."""

    def load(self, data: Any) -> int | float:
        s = bytes(data).decode()
        try:
            return int(s)
        except ValueError:
            return float(s)


_INT64 = 2**63


def _param(p: Any) -> Any:
    if isinstance(p, bool):  # SQLite stores booleans as 0/1; PostgreSQL's BIGINT takes none
        return int(p)
    if isinstance(p, int) and not -_INT64 <= p < _INT64:
        # as SQLite does: the API answers 422 "a number is larger than the store holds"
        raise OverflowError("Python int too large to convert to a 64-bit integer")
    return p


def _params(params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_param(p) for p in params)


class TranslatingConnection:
    """The store's Connection (controller/store/sql.py) on PostgreSQL: each statement
    translated from the store's SQL, its parameters adapted."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(translate(sql), _params(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.executemany(translate(sql), [_params(r) for r in rows])
        return cur


def postgres_error(exc: psycopg.Error) -> CloudpilotError:
    """The controller's storage error for a PostgreSQL error (the one place that reads its
    codes)."""
    if isinstance(exc, psycopg.DataError):  # a value the request sent that no column holds
        # (SQLite stores these: a text with a NUL byte): the request's fault, a 422
        first = (str(exc).strip().splitlines() or ["invalid value"])[0]
        return InvalidInput(f"invalid request: the store cannot hold a value it sent: {first}")
    if isinstance(exc, pgerrors.SerializationFailure | pgerrors.DeadlockDetected
                  | pgerrors.LockNotAvailable):
        return StorageBusy(f"the database is busy: {exc}; retry")
    if isinstance(exc, pgerrors.UniqueViolation):
        return StorageBusy(f"a concurrent change came first: {exc}; retry")
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(f"the database is unreachable: {exc}; retry")
    return StorageError(f"database error: {exc}")


class PostgresBackend:
    """A connection pool; `tx()` a transaction on one of its connections (a tx() inside another
    on the same thread joins it), `read()` a connection for reads."""

    name = "postgres"

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16) -> None:
        self.url = url
        self._local = threading.local()
        self.pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, timeout=10,
            configure=self._configure, kwargs={"autocommit": True}, name="cloudpilot")
        try:
            self.pool.open(wait=True, timeout=15)
        except PoolTimeout:
            self.pool.close()
            raise StorageError(f"cannot connect to the database {redact(url)} within 15 s; "
                               "is PostgreSQL running and the URL right?") from None

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.row_factory = _row_factory
        conn.adapters.register_loader("numeric", _Number)

    @contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool, its errors as the controller's."""
        try:
            with self.pool.connection() as raw:
                yield raw
        except psycopg.Error as e:
            raise self._failed(e) from None
        except PoolTimeout:
            raise StorageBusy("no database connection free within 10 s; retry") from None

    @contextmanager
    def tx(self) -> Iterator[TranslatingConnection]:
        current: TranslatingConnection | None = getattr(self._local, "conn", None)
        if current is not None:  # join the transaction this thread has open
            yield current
            return
        with self._pooled() as raw, raw.transaction():
            conn = self._local.conn = TranslatingConnection(raw)
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def read(self) -> Iterator[TranslatingConnection]:
        """Reads, each statement on its own (autocommit: no BEGIN and COMMIT round trips);
        inside this thread's transaction, in it."""
        current: TranslatingConnection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._pooled() as raw:
            yield TranslatingConnection(raw)

    def _failed(self, e: psycopg.Error) -> CloudpilotError:
        """The error to raise; when the server went away (a restart), the pool's idle
        connections are checked and the dead ones dropped, so that the next requests get
        live ones rather than each failing on one."""
        if isinstance(e, psycopg.OperationalError):
            try:
                self.pool.check()
            except Exception:  # the server is still away: the next error checks again
                log.debug("checking the pool's connections failed", exc_info=True)
        return postgres_error(e)

    def close(self) -> None:
        self.pool.close()
