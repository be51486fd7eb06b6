"""A real PostgreSQL server for the tests: Debian's `postgresql` package, `initdb` in a fresh
directory as the unprivileged `postgres` user, listening on 127.0.0.1 (a free port) and on a
Unix socket in its own directory, stopped by PID at the end.

PostgreSQL refuses to run as root, and its data directory's parents must be traversable by
`postgres`: pytest's /tmp/pytest-of-root is 0700, so the server lives under /var/tmp."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why a PostgreSQL server cannot be started here (None: it can)."""
    if _bindir() is None:
        return "PostgreSQL is not installed (Debian's postgresql package; `make test` installs it)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` user to run PostgreSQL as"
    if os.geteuid() != 0 and pwd.getpwnam("postgres").pw_uid != os.geteuid():
        return "starting PostgreSQL as `postgres` needs root (runuser)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster: start(), url(database), create_database(), restart(), stop()."""

    def __init__(self) -> None:
        bindir = _bindir()
        assert bindir is not None, unavailable()
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="cloudpilot-pg-", dir="/var/tmp"))
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.port = _free_port()
        self.log = self.root / "server.log"
        self.pid: int | None = None

    def _as_postgres(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def start(self) -> PostgresServer:
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if not self.data.exists():
            subprocess.run(self._as_postgres(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"),
                check=True, capture_output=True, timeout=120)
            self.sockdir.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(self.sockdir, pw.pw_uid, pw.pw_gid)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockdir} -c fsync=off"
                " -c max_connections=200 -c synchronous_commit=on"
                # statements counted by the work-budget tests (tests/integration/test_budget.py)
                " -c shared_preload_libraries=pg_stat_statements")
        subprocess.run(self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "-o", opts, "start"), check=True, capture_output=True, timeout=90)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl, then SIGKILL by PID if it lingers)."""
        if self.pid is None:
            return
        subprocess.run(self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30",
            "stop"), capture_output=True, timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def restart(self) -> None:
        """Stop (immediate: every connection is cut) and start again on the same port."""
        self.stop("immediate")
        deadline = time.monotonic() + 10
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()
