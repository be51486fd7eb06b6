"""Database errors get their own error with SQLite's true reason (real SQLite errors); the
store raises only those, never the backend's own (the PostgreSQL side:
tests/integration/test_store_postgres.py)."""

import sqlite3

import pytest

from controller.errors import StorageBusy, StorageError, StorageFull, StorageReadOnly
from controller.store import Store
from controller.store.sqlite import sqlite_error


def test_a_write_to_a_read_only_database_is_a_503_that_says_read_only(tmp_path):
    Store(tmp_path / "q.db").close()
    ro = sqlite3.connect(f"file:{tmp_path / 'q.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("INSERT INTO users (name, grp, share, created_at) VALUES ('x', 'y', 1, 0)")
    err = sqlite_error(e.value)
    assert isinstance(err, StorageReadOnly) and err.status_code == 503
    assert "read-only" in err.message and "attempt to write a readonly database" in err.message


def test_a_locked_database_is_busy_and_a_full_one_is_507(tmp_path):
    a = sqlite3.connect(tmp_path / "b.db", timeout=0, isolation_level=None)
    a.execute("CREATE TABLE t (x)")
    a.execute("BEGIN IMMEDIATE")
    b = sqlite3.connect(tmp_path / "b.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError) as e:
        b.execute("INSERT INTO t VALUES (1)")
    assert isinstance(sqlite_error(e.value), StorageBusy)
    a.execute("ROLLBACK")
    # a database capped at its current size: the next page it needs is refused as full
    a.execute("CREATE TABLE big (x)")
    pages = a.execute("PRAGMA page_count").fetchone()[0]
    a.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as e:
        a.execute("INSERT INTO big VALUES (zeroblob(100000))")
    full = sqlite_error(e.value)
    assert isinstance(full, StorageFull) and full.status_code == 507
    assert "database or disk is full" in full.message


def test_the_store_raises_its_own_errors_not_sqlites(tmp_path):
    store = Store(tmp_path / "q.db")
    try:
        with pytest.raises(StorageError, match="no such table") as e, store.read() as c:
            c.execute("SELECT * FROM no_such_table")
        assert not isinstance(e.value, sqlite3.Error)
        with pytest.raises(StorageError, match="no such table"), store.tx() as c:
            c.execute("DELETE FROM no_such_table")
        store.tokens.create_user("alice", "physics")  # the failed transaction left none open
    finally:
        store.close()
