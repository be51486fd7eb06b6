"""The SQLite backend, the embedded default: one file in WAL mode, one connection guarded by a
lock, so that one process never interleaves two transactions."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlite_utils import Database

from controller.errors import StorageError, StorageReadOnly, storage_error


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        except FileExistsError:
            raise StorageError(f"cannot open the database {self.path}: "
                               f"{self.path.parent} is a file, not a folder") from None
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the database {self.path}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        try:
            conn.row_factory = sqlite3.Row
            self.db = Database(conn)
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.execute("PRAGMA cache_size=-65536")  # 64 MB: hot queue pages stay cached
        except sqlite3.Error as e:
            conn.close()
            raise self.open_error(e) from None
        self.lock = threading.RLock()
        self._depth = 0  # nested tx() blocks of the thread holding the lock

    def open_error(self, e: sqlite3.Error) -> StorageError:
        ro = next((p for p in (self.path, self.path.parent)
                   if p.exists() and not os.access(p, os.W_OK)), None)
        if ro is not None:  # SQLite says only "unable to open database file"
            return StorageReadOnly(f"cannot open the database {self.path}: {ro} is "
                                   f"read-only ({e})")
        return storage_error(e, f"opening {self.path}")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front). A tx() inside
        another (same thread) joins it: a service that calls several query methods in
        `with store.tx():` commits all of their writes, or none."""
        with self.lock:
            conn = self.db.conn
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # also when COMMIT itself failed (disk full): leave no transaction open, so the
                # next request starts clean and works once space returns
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            yield self.db.conn

    def trace(self, callback: Callable[[str], None] | None) -> None:
        """Call `callback` with every statement SQLite runs (None: stop); for the tests that
        count the work of a request."""
        self.db.conn.set_trace_callback(callback)

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()
