"""What differs between the backends, without a server: SQL translation, database settings,
the password kept from pilots (the parts on a real PostgreSQL:
tests/integration/test_store_postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config.database import is_postgres, redact
from controller.config.settings import Settings
from controller.errors import ConfigError
from controller.store import Store
from controller.store.postgres import translate


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


def test_a_restore_takes_only_a_sound_cloudpilot_database_and_never_overwrites(tmp_path):
    from controller.errors import BackupError
    from controller.services import backups

    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackupError, match="not a cloudpilot database"):
        backups.restore(str(tmp_path / "new.db"), tmp_path / "junk.db")
    Store(tmp_path / "live.db").close()
    with pytest.raises(BackupError, match="exists already"):
        backups.restore(str(tmp_path / "live.db"), tmp_path / "live.db")
    with pytest.raises(BackupError, match="give the backup file"):
        backups.restore(str(tmp_path / "new.db"), None)
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "new.db.part").exists()
