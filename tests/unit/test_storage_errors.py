"""Database errors get their own error with SQLite's true reason (real SQLite errors)."""

import sqlite3

import pytest

from controller.errors import StorageBusy, StorageFull, StorageReadOnly, storage_error
from controller.store import Store


def test_a_write_to_a_read_only_database_is_a_503_that_says_read_only(tmp_path):
    Store(tmp_path / "q.db").close()
    ro = sqlite3.connect(f"file:{tmp_path / 'q.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("INSERT INTO users (name, grp, share, created_at) VALUES ('x', 'y', 1, 0)")
    err = storage_error(e.value)
    assert isinstance(err, StorageReadOnly) and err.status_code == 503
    assert "read-only" in err.message and "attempt to write a readonly database" in err.message


def test_a_locked_database_is_busy_and_a_full_one_is_507(tmp_path):
    a = sqlite3.connect(tmp_path / "b.db", timeout=0, isolation_level=None)
    a.execute("CREATE TABLE t (x)")
    a.execute("BEGIN IMMEDIATE")
    b = sqlite3.connect(tmp_path / "b.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError) as e:
        b.execute("INSERT INTO t VALUES (1)")
    assert isinstance(storage_error(e.value), StorageBusy)
    a.execute("ROLLBACK")
    # a database capped at its current size: the next page it needs is refused as full
    a.execute("CREATE TABLE big (x)")
    pages = a.execute("PRAGMA page_count").fetchone()[0]
    a.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as e:
        a.execute("INSERT INTO big VALUES (zeroblob(100000))")
    full = storage_error(e.value)
    assert isinstance(full, StorageFull) and full.status_code == 507
    assert "database or disk is full" in full.message
