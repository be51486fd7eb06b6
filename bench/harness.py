"""A real controller process for the load and fault benchmarks: `cloudpilot serve` on
127.0.0.1 (a random port) with a config file and a database in a temporary folder, users and
tokens made beforehand, started and stopped (or killed) by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.auth import Role
from controller.cli.demo import free_port
from controller.store import Store

ROOT = Path(__file__).resolve().parent.parent
USERS = (("alice", "physics"), ("bob", "biology"))


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


@dataclass
class Controller:
    root: Path
    settings: dict[str, Any]
    endpoints: list[dict[str, Any]]
    port: int = field(default_factory=free_port)
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.root / "cloudpilot.db"

    def prepare(self) -> None:
        """Write the config; make users, their tokens and a pilot token per endpoint."""
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {_toml(v)}" for k, v in {
            "database": str(self.database), "data_dir": str(self.root / "data"),
            "port": self.port, **self.settings}.items()]
        for ep in self.endpoints:
            lines.append("\n[[endpoints]]")
            lines += [f"{k} = {_toml(v)}" for k, v in ep.items()]
        (self.root / "cloudpilot.toml").write_text("\n".join(lines) + "\n")
        store = Store(self.database)
        for user, group in USERS:
            store.tokens.create_user(user, group)
            self.tokens[user] = store.tokens.issue(Role.USER, owner=user, note="bench")
        self.tokens["admin"] = store.tokens.issue(Role.ADMIN, note="bench")
        for ep in self.endpoints:
            self.tokens[f"pilot:{ep['name']}"] = store.tokens.issue(
                Role.PILOT, endpoint=ep["name"], note="bench")
        store.close()

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.root / "controller.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--config",
             str(self.root / "cloudpilot.toml")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the controller exited:\n" + self.log()[-2000:])
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the controller did not answer:\n" + self.log()[-2000:])
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        try:
            return (self.root / "controller.log").read_text()
        except FileNotFoundError:
            return ""

    def threads(self) -> int:
        """The controller process's thread count now."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("Threads:")).split()[1])

    def client(self, who: str = "admin", timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.tokens[who]}"})


def kill_tree(pids: list[int]) -> None:
    """SIGKILL process groups by leader PID (what a benchmark started, and nothing else)."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
