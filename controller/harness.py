"""A real controller for tests and benchmarks (and a site's own tests): `cloudpilot serve`
as a process on 127.0.0.1 at a free port, its config file and database in a folder, users
and tokens made beforehand, real pilot processes started by hand; everything it starts is
stopped by PID (`end_controller`). tests/conftest.py builds its fixtures on it; bench/ runs
its load and fault benchmarks with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.auth import Role
from controller.drivers.proctree import MachineProcesses
from controller.store import Store

REPO = Path(__file__).resolve().parents[1]
# an endpoint whose pilots the test starts by hand (max_machines 0: the loop starts none)
MANUAL: dict[str, Any] = {
    "name": "manual", "driver": "local", "cores": 8, "memory_mb": 8192, "slots": 4,
    "max_machines": 0, "tags": ["linux", "gpu"], "heartbeat_interval": 0.5, "lost_after": 3,
    "idle_timeout": 60}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. an endpoint's [endpoints.aws] section
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return str(v)


@dataclass
class Controller:
    root: Path
    port: int
    settings: dict[str, Any]
    endpoints: list[dict[str, Any]]
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    pilots: list[subprocess.Popen[bytes]] = field(default_factory=list)
    db_url: str | None = None  # a postgresql:// database instead of the SQLite file

    @property
    def url(self) -> str:
        return f"http://{self.settings.get('host', '127.0.0.1')}:{self.port}"

    @property
    def config(self) -> Path:
        return self.root / "cloudpilot.toml"

    @property
    def database(self) -> Any:
        """The SQLite file (a Path), or the postgresql:// URL it was made with."""
        return self.db_url or self.root / "cloudpilot.db"

    def write_config(self) -> None:
        lines = [f"{k} = {toml_value(v)}" for k, v in {
            "database": str(self.database), "data_dir": str(self.root / "data"),
            "port": self.port, **self.settings}.items()]
        for ep in self.endpoints:
            lines.append("\n[[endpoints]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in ep.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        log = open(self.root / "controller.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--config", str(self.config)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError("controller exited: " + self.log()[-2000:])
            try:
                return httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 20, what="the controller to answer")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        try:
            return (self.root / "controller.log").read_text()
        except FileNotFoundError:
            return ""

    def client(self, who: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.tokens[who]}"})

    def bootstrap(self, endpoint: str = "manual") -> str:
        """A fresh one-time bootstrap token of the endpoint (registering spends it)."""
        with self.client() as c:
            r = c.post("/api/v1/admin/tokens", json={"role": "pilot", "endpoint": endpoint})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def register(self, endpoint: str = "manual", machine: str = "m1", **kw: Any) -> str:
        """Register a pilot over HTTP (the test acting as the pilot); its own credential is
        kept as tokens[pilot_id]."""
        body = {"machine": machine, "cores": 4, "memory_mb": 4096, "slots": 2,
                "tags": ["linux"], **kw}
        r = httpx.post(self.url + "/api/v1/pilots/register", json=body, headers={
            "Authorization": f"Bearer {self.bootstrap(endpoint)}"})
        assert r.status_code == 201, r.text
        self.tokens[r.json()["pilot_id"]] = r.json()["token"]
        return str(r.json()["pilot_id"])

    def start_pilot(self, machine: str, *, endpoint: str = "manual", slots: int = 1,
                    cores: int = 2, memory_mb: int = 2048, tags: list[str] | None = None,
                    idle_timeout: float = 60, **extra: Any) -> subprocess.Popen[bytes]:
        """A real pilot process, started by hand (not by the scheduler)."""
        d = self.root / "pilots" / machine
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"controller_url": self.url, "token": self.bootstrap(endpoint),
               "endpoint": endpoint, "machine": machine, "slots": slots, "cores": cores,
               "memory_mb": memory_mb, "tags": tags or ["linux"], "idle_timeout": idle_timeout,
               "heartbeat_interval": 0.5, "poll_wait": 5, "workdir": str(d / "work"),
               "stop_grace": 2, "isolation": "bwrap", **extra}
        (d / "pilot.json").write_text(json.dumps(cfg))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        p = subprocess.Popen([sys.executable, "-m", "pilot", "--config", str(d / "pilot.json")],
                             cwd=d, stdout=open(d / "pilot.log", "ab"), stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        self.pilots.append(p)
        return p

    # small API helpers -------------------------------------------------------------------
    def submit(self, who: str, *jobs: dict[str, Any]) -> list[int]:
        with self.client(who) as c:
            r = c.post("/api/v1/jobs/bulk", json={"jobs": list(jobs)})
        assert r.status_code == 201, r.text
        return list(r.json()["ids"])

    def job(self, job_id: int) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, job_id: int) -> list[dict[str, Any]]:
        with self.client() as c:
            return list(c.get(f"/api/v1/jobs/{job_id}/events").json())

    def wait_state(self, job_id: int, *states: str, timeout: float = 20) -> dict[str, Any]:
        return dict(wait_until(lambda: (j := self.job(job_id))["state"] in states and j,
                               timeout, 0.1, f"job {job_id} to be {'/'.join(states)}"))

    def wait_ticks(self, endpoint: str, n: int = 3, timeout: float = 20) -> None:
        """Until the loop has decided n more ticks of the endpoint: to check that something
        did not happen, over decisions the loop made rather than over seconds slept."""
        def ids() -> list[int]:
            with self.client() as c:
                r = c.get("/api/v1/ticks", params={"endpoint": endpoint, "limit": n})
            return [int(t["id"]) for t in r.json()]
        before = max(ids(), default=0)
        wait_until(lambda: len(new := ids()) == n and min(new) > before, timeout, 0.1,
                   f"{n} more ticks of {endpoint}")

    def long_polls(self) -> int:
        """Pilots' match requests waiting for work in the controller now (its metric)."""
        with self.client() as c:
            text = c.get("/metrics").text
        (line,) = (x for x in text.splitlines() if x.startswith("cloudpilot_match_long_polls "))
        return int(float(line.split()[1]))

    def wait_long_polls(self, n: int, timeout: float = 15) -> None:
        """Until n match requests wait in the long-poll (before a submission that must wake
        them)."""
        wait_until(lambda: self.long_polls() >= n, timeout, 0.05, f"{n} long-polls waiting")


def new_controller(root: Path, endpoints: list[dict[str, Any]] | None = None,
                   **settings: Any) -> Controller:
    """A controller's config and database (users alice, bob, carol; an admin token; a
    bootstrap token per endpoint), not yet started."""
    root.mkdir(exist_ok=True)
    url = settings.pop("database", None)
    eps = endpoints if endpoints is not None else [MANUAL]
    base = {"loop_interval": 0.3, "lease": 3, "lease_margin": 1, "max_retries": 2}
    ctrl = Controller(root, free_port(), {**base, **settings}, eps, db_url=url)
    ctrl.write_config()
    store = Store(ctrl.database)
    for user, group in (("alice", "physics"), ("bob", "biology"), ("carol", "physics")):
        store.tokens.create_user(user, group)
        ctrl.tokens[user] = store.tokens.issue(Role.USER, owner=user)
    ctrl.tokens["admin"] = store.tokens.issue(Role.ADMIN)
    for ep in eps:
        ctrl.tokens[f"pilot:{ep['name']}"] = store.tokens.issue(Role.PILOT,
                                                                endpoint=ep["name"])
    store.close()
    return ctrl


def end_controller(c: Controller) -> None:
    """Stop a controller, its pilots, and the machines its local driver started."""
    for p in c.pilots:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
    c.stop()
    # machines the local driver started live in their own sessions: end them, with every
    # payload they started
    for pid_file in (c.root / "data-machines").glob("*/*/pilot.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        MachineProcesses(pid_file.parent.parent, pid_file.parent.name).kill()
