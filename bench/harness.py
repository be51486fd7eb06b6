"""A real controller process for the load and fault benchmarks: the tests' own
(controller/harness.py: `cloudpilot serve` on 127.0.0.1, a random port, a config file and a
database in a folder, users and tokens made beforehand, started and stopped by PID)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.auth import Role
from controller.harness import Controller, new_controller
from controller.store import Store


def make_controller(root: Path, settings: dict[str, Any],
                    endpoints: list[dict[str, Any]]) -> Controller:
    """A controller in `root` (config, users, tokens), not yet started."""
    return new_controller(root, endpoints, **settings)


def bootstrap_tokens(ctl: Controller, endpoint: str, n: int) -> list[str]:
    """`n` one-time bootstrap tokens of an endpoint (each registers one pilot)."""
    store = Store(ctl.database)
    try:
        return [store.tokens.issue(Role.PILOT, endpoint=endpoint, note="bench")
                for _ in range(n)]
    finally:
        store.close()


def threads(ctl: Controller) -> int:
    """The controller process's thread count now."""
    assert ctl.proc is not None
    status = Path(f"/proc/{ctl.proc.pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("Threads:")).split()[1])
