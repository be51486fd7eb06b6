"""The SQLite backend, the embedded default: one file in WAL mode; one writing connection
guarded by a lock, so that one process never interleaves two transactions, and a reading
connection per thread (WAL readers see the last commit and never wait for the writer).

Checkpoints (copying the WAL's pages into the database file, with its fsync) run in a thread of
their own every CHECKPOINT_EVERY seconds, not inside whichever commit crosses SQLite's automatic
threshold: a request's COMMIT only appends to the WAL. Durability is unchanged (WAL with
synchronous=NORMAL either way)."""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from controller.errors import (
    BackupError,
    StorageBusy,
    StorageError,
    StorageFull,
    StorageReadOnly,
)


def sqlite_error(exc: sqlite3.Error, what: str = "") -> StorageError:
    """The controller's storage error for a SQLite error, with the true cause in its message
    (the one place that reads SQLite's error codes)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    cause = str(exc)
    where = f" ({what})" if what else ""
    if name.startswith("SQLITE_FULL"):
        return StorageFull(f"the disk holding the database is full{where}: {cause}; writes "
                           "are refused until space is freed, reads still work")
    if name.startswith("SQLITE_READONLY"):
        return StorageReadOnly(f"the database is read-only{where}: {cause}; writes are refused "
                               "until it is writable again, reads still work")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StorageBusy(f"the database is busy{where}: {cause}; retry")
    return StorageError(f"database error{where}: {cause}")


@contextmanager
def _mapped() -> Iterator[None]:
    """SQLite's errors raised in the block, as the controller's storage errors."""
    try:
        yield
    except sqlite3.Error as e:
        raise sqlite_error(e) from e

CHECKPOINT_EVERY = 1.0  # seconds between the background checkpoints


class _Reader(sqlite3.Connection):
    """A thread's reading connection (a subclass, so that the backend can hold it weakly)."""


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
            self.db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it
        except sqlite3.Error as e:
            conn.close()
            raise self.open_error(e) from None
        self.lock = threading.RLock()
        self._depth = 0  # nested tx() blocks of the thread holding the lock
        self._writer: int | None = None  # the thread inside tx()
        self._local = threading.local()  # each thread's reading connection
        # the live ones, for trace() and close(); a thread's goes (and closes) with it
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._trace: Callable[[str], None] | None = None
        self._row_factory: Callable[[sqlite3.Cursor, tuple[Any, ...]], Any] = sqlite3.Row
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, daemon=True,
                                              name="sqlite-checkpoint")
        self._checkpointer.start()

    def _checkpoints(self) -> None:
        """Every CHECKPOINT_EVERY seconds, a PASSIVE checkpoint on a connection of its own
        (it never waits for the writer nor the readers; what it cannot copy yet, the next one
        does). A checkpoint that fails (a full disk) is tried again at the next."""
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        except sqlite3.Error:  # the writer's own commits checkpoint instead, as by default
            with self.lock, suppress(sqlite3.Error):
                self.db.conn.execute("PRAGMA wal_autocheckpoint=1000")
            return
        try:
            while not self._closing.wait(CHECKPOINT_EVERY):
                with suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def open_error(self, e: sqlite3.Error) -> StorageError:
        ro = next((p for p in (self.path, self.path.parent)
                   if p.exists() and not os.access(p, os.W_OK)), None)
        if ro is not None:  # SQLite says only "unable to open database file"
            return StorageReadOnly(f"cannot open the database {self.path}: {ro} is "
                                   f"read-only ({e})")
        return sqlite_error(e, f"opening {self.path}")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front). A tx() inside
        another (same thread) joins it: a service that calls several query methods in
        `with store.tx():` commits all of their writes, or none. SQLite's errors leave it as
        the controller's storage errors."""
        with _mapped(), self._transaction() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
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
            self._depth, self._writer = 1, threading.get_ident()
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
                self._depth, self._writer = 0, None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Reads on this thread's own connection, each statement seeing the last commit;
        inside this thread's transaction, in it (its writes seen)."""
        if self._writer == threading.get_ident():
            yield self.db.conn
            return
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._reader()
        with _mapped():
            yield conn

    def _reader(self) -> _Reader:
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30,
                                   factory=_Reader)
            conn.row_factory = self._row_factory
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA cache_size=-16384")
        except sqlite3.Error as e:
            raise self.open_error(e) from None
        conn.set_trace_callback(self._trace)
        with self.lock:
            self._readers.add(conn)
        return conn

    def trace(self, callback: Callable[[str], None] | None,
              rows: Callable[[], None] | None = None) -> None:
        """Call `callback` with every statement SQLite runs, and `rows` for every row it
        answers, on every connection (None: stop); for the tests that count the work of a
        request."""
        def counted(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> sqlite3.Row:
            assert rows is not None
            rows()
            return sqlite3.Row(cursor, row)

        self._trace = callback
        self._row_factory = sqlite3.Row if rows is None else counted
        with self.lock:
            for conn in [self.db.conn, *list(self._readers)]:
                conn.set_trace_callback(callback)
                conn.row_factory = self._row_factory

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not threading.current_thread():
            self._checkpointer.join(10)
        with self.lock:
            for conn in list(self._readers):
                conn.close()
            self._readers.clear()
            self.db.conn.close()


# backups (issue 26) -----------------------------------------------------------------------
def copy_database(source: Path, dest: Path) -> int:
    """Copy a SQLite database to `dest`, a new file, while others keep using it: SQLite's
    online backup API in one step (one consistent snapshot; in WAL mode writers go on), into
    a temporary file renamed when complete and checked. Answers the pages copied."""
    if dest.exists():
        raise BackupError(f"{dest} exists already: give a new path")
    if not source.is_file():
        raise BackupError(f"{source} is not a file")
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(str(source), timeout=30)
        try:
            dst = sqlite3.connect(str(part))
            try:
                src.backup(dst)
                ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
                tables = {r[0] for r in dst.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.DatabaseError as e:
        part.unlink(missing_ok=True)
        raise BackupError(f"{source} is not a cloudpilot database: {e}") from None
    if ok != "ok" or not {"jobs", "tokens", "machines"} <= tables:
        part.unlink(missing_ok=True)
        raise BackupError(f"{source} is not a sound cloudpilot database ({ok})")
    os.replace(part, dest)
    return pages
