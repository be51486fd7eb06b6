"""Backups and restores (issue 26). SQLite: `backup` copies the live database with SQLite's
online backup API; `restore` copies a backup into a new database path. PostgreSQL: its own
tools do both (pg_dump, pg_restore); `restore` then only finishes the job. Either way the
restored database's held jobs (matched or running when the backup was taken) are rescheduled
as interrupted, using no retry: their pilots belong to the time before."""

from __future__ import annotations

from pathlib import Path

from controller.config.database import is_postgres
from controller.errors import BackupError
from controller.store import Store
from controller.store.sqlite import copy_database

PG_BACKUP = ("the database is PostgreSQL: back it up with its own tool, `pg_dump -Fc "
             "--no-owner -f FILE 'postgresql://...'` (consistent while the controllers run)")
PG_RESTORE = ("the database is PostgreSQL: restore a dump with `createdb NEW && pg_restore "
              "--no-owner -d 'postgresql://.../NEW' FILE`, point `database` at it, then run "
              "`cloudpilot admin restore --after-pg-restore` before starting the controllers")
RESTORED = "the controller was restored from a backup: this attempt's pilot is of the time before"


def backup(database: str, dest: Path) -> int:
    """Back the database up to `dest` (a new file) while the controller runs; pages copied."""
    if is_postgres(database):
        raise BackupError(PG_BACKUP)
    return copy_database(Path(database), dest)


def restore(database: str, source: Path | None, *, after_pg_restore: bool = False) -> list[int]:
    """Restore a backup as the configured database (which must not exist yet: restore into a
    fresh data dir, with no controller running on it), migrate it to this version, and
    reschedule the jobs it held as interrupted; answers their ids."""
    if is_postgres(database):
        if source is not None or not after_pg_restore:
            raise BackupError(PG_RESTORE)
    else:
        if source is None or after_pg_restore:
            raise BackupError("give the backup file to restore: `cloudpilot admin restore "
                              "FILE` (--after-pg-restore is for PostgreSQL)")
        copy_database(source, Path(database))
    store = Store(database)
    try:
        return store.jobs.interrupt(None, RESTORED)
    finally:
        store.close()
