"""Shared fixtures: a real controller (controller/harness.py: uvicorn subprocess on 127.0.0.1,
a random port, a real SQLite file or PostgreSQL database) and real pilot processes."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import harness
from controller.harness import (  # noqa: F401 (the tests import them from here)
    MANUAL,
    REPO,
    Controller,
    end_controller,
    free_port,
    toml_value,
    wait_until,
)


@contextlib.contextmanager
def peaks(interval: float = 0.1, **probes: Callable[[], int]) -> Iterator[dict[str, int]]:
    """While the block runs, sample each probe every `interval` seconds in a thread; the
    dict yielded holds the highest value each probe gave."""
    seen = dict.fromkeys(probes, 0)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for name, probe in probes.items():
                seen[name] = max(seen[name], probe())
            stop.wait(interval)

    t = threading.Thread(target=watch)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join()


def path_without(binary: str) -> str:
    """$PATH minus the folders holding `binary` (to test what happens where it is missing)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not os.path.exists(os.path.join(d, binary)))


# A Python for payloads: the system's, outside /tmp (a bubblewrap sandbox gives each payload a
# fresh /tmp, so a venv in a checkout under /tmp is not there for it)
PAYLOAD_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def sh(script: str, **req: Any) -> dict[str, Any]:
    """A job running a shell script."""
    return {"executable": "/bin/sh", "arguments": ["-c", script],
            "requirements": {"max_runtime": 120, **req}}


LOCAL = {"name": "local", "driver": "local", "cores": 2, "memory_mb": 2048, "slots": 2,
         "max_machines": 2, "max_starts_per_cycle": 2, "idle_timeout": 2,
         "heartbeat_interval": 0.5, "lost_after": 4, "boot_timeout": 30}

_SHARED_PG: Any = None


def shared_postgres() -> Any:
    """The run's one real PostgreSQL server (tests/pgserver.py): started when first asked
    for, stopped by PID when the run ends."""
    global _SHARED_PG
    if _SHARED_PG is None:
        import atexit

        from tests import pgserver

        _SHARED_PG = pgserver.PostgresServer().start()
        atexit.register(_SHARED_PG.close)
    return _SHARED_PG


def backend_database() -> str | None:
    """With CLOUDPILOT_TEST_BACKEND=postgres in the environment, a fresh database on the
    run's PostgreSQL server (to run the integration tests on that backend; tests that read
    the SQLite file themselves then fail); otherwise None (SQLite)."""
    if os.environ.get("CLOUDPILOT_TEST_BACKEND") != "postgres":
        return None
    return str(shared_postgres().create_database())


def new_controller(root: Path, endpoints: list[dict[str, Any]] | None = None,
                   **settings: Any) -> Controller:
    """controller.harness.new_controller on the run's backend (backend_database)."""
    database = settings.pop("database", None) or backend_database()
    return harness.new_controller(root, endpoints, database=database, **settings)


@pytest.fixture
def make_controller(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    """Build and start a controller: make_controller(endpoints=[...], **settings)."""
    made: list[Controller] = []

    def make(endpoints: list[dict[str, Any]] | None = None, start: bool = True,
             root: Path | None = None, **settings: Any) -> Controller:
        ctrl = new_controller(root or tmp_path / f"ctrl{len(made)}", endpoints, **settings)
        made.append(ctrl)
        if start:
            ctrl.start()
        return ctrl

    yield make
    for c in made:
        end_controller(c)


# PostgreSQL (issue 15) ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """The run's PostgreSQL server (shared_postgres); skipped, saying why, where none can
    run."""
    from tests import pgserver

    why = pgserver.unavailable()
    if why is not None:
        pytest.skip(why)
    return shared_postgres()


# the PostgreSQL instance of a test run on both backends starts a server: not in `make test-fast`
POSTGRES_MARKS = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=POSTGRES_MARKS)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's database for a test, once per backend: a SQLite file, or a fresh database
    on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "q.db")
    return str(request.getfixturevalue("postgres_server").create_database())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks by what a test starts, so none can be forgotten: every test under
    tests/integration is `integration`; one that asks for the PostgreSQL server is also
    `postgres` (`make test-fast` runs `-m "not integration"`)."""
    integration = REPO / "tests" / "integration"
    for item in items:
        if item.path.is_relative_to(integration):
            item.add_marker(pytest.mark.integration)
        if "postgres_server" in getattr(item, "fixturenames", ()):
            for mark in POSTGRES_MARKS:
                item.add_marker(mark)
