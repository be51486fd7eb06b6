"""Pilot configuration: a small JSON or TOML file, or environment variables."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV = {
    "controller_url": "CLOUDPILOT_URL",
    "token": "CLOUDPILOT_PILOT_TOKEN",
    "endpoint": "CLOUDPILOT_ENDPOINT",
    "machine": "CLOUDPILOT_MACHINE",
    "slots": "CLOUDPILOT_SLOTS",
    "cores": "CLOUDPILOT_CORES",
    "memory_mb": "CLOUDPILOT_MEMORY_MB",
    "tags": "CLOUDPILOT_TAGS",
    "idle_timeout": "CLOUDPILOT_IDLE_TIMEOUT",
    "workdir": "CLOUDPILOT_WORKDIR",
    "metadata_url": "CLOUDPILOT_METADATA_URL",
    "deadline": "CLOUDPILOT_DEADLINE",
    "isolation": "CLOUDPILOT_ISOLATION",
    "orphan_timeout": "CLOUDPILOT_ORPHAN_TIMEOUT",
}


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


@dataclass
class PilotConfig:
    controller_url: str
    token: str
    endpoint: str | None = None
    machine: str = field(default_factory=socket.gethostname)
    slots: int = 1
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = field(default_factory=_memory_mb)
    tags: list[str] = field(default_factory=list)
    idle_timeout: float = 600.0  # exit when idle this long
    # a pilot that cannot reach its controller this long leaves (at once when it holds no
    # job; else once its jobs' leases have run out): its machine must not outlive the
    # controller that would stop it (longer than a controller restart)
    orphan_timeout: float = 600.0
    heartbeat_interval: float | None = None  # None: what the controller says at register
    poll_wait: float = 20.0  # long-poll for work this long per request
    workdir: str = "work"
    max_output_bytes: int = 1_000_000  # per job, stdout + stderr, tail kept
    stop_grace: float = 5.0  # SIGTERM -> SIGKILL for payloads
    # on an EC2 spot instance: "http://169.254.169.254", watched for an interruption notice
    metadata_url: str | None = None
    metadata_interval: float = 5.0
    # how payloads are sandboxed (pilot/sandbox.py): bwrap | user | none (only when asked)
    isolation: str = "bwrap"
    hide: list[str] = field(default_factory=list)  # more paths no payload may see
    payload_user: str = "nobody"  # isolation = user: who runs payloads
    config_path: str | None = None  # where this config was read from (hidden from payloads)
    # when this pilot will be killed (Unix time; e.g. its batch job's end, set by the batch
    # script); None: no limit. It asks only for jobs that end before it, time_margin earlier.
    deadline: float | None = None
    time_margin: float = 60.0

    def time_left(self, now: float) -> int | None:
        """Seconds a job may run here from now; None: no limit."""
        if self.deadline is None:
            return None
        return max(0, int(self.deadline - now - self.time_margin))

    @classmethod
    def load(cls, path: str | None = None) -> PilotConfig:
        data: dict[str, object] = {}
        if path:
            text = Path(path).read_text()
            data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
        for key, var in ENV.items():
            if var in os.environ and key not in data:
                val: object = os.environ[var]
                if key == "tags":
                    val = [t for t in str(val).split(",") if t]
                data[key] = val
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown pilot settings: {sorted(unknown)}")
        for key in ("controller_url", "token"):
            if not data.get(key):
                raise ValueError(f"the pilot needs {key} (file, or {ENV[key]})")
        for key in ("slots", "cores", "memory_mb"):
            if key in data:
                data[key] = int(data[key])  # type: ignore[call-overload]
        for key in ("idle_timeout", "orphan_timeout", "poll_wait", "stop_grace",
                    "metadata_interval", "deadline", "time_margin"):
            if key in data:
                data[key] = float(data[key])  # type: ignore[arg-type]
        if data.get("isolation", "bwrap") not in ("bwrap", "user", "none"):
            raise ValueError(f"isolation must be bwrap, user or none, not {data['isolation']!r}")
        if path:
            data["config_path"] = str(Path(path).resolve())
        return cls(**data)  # type: ignore[arg-type]
