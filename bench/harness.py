"""A real controller process for the load and fault benchmarks: the tests' own (tests/conftest.py:
`cloudpilot serve` on 127.0.0.1, a random port, a config file and a database in a folder, users
and tokens made beforehand, started and stopped by PID)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Controller, free_port, prepare


def make_controller(root: Path, settings: dict[str, Any],
                    endpoints: list[dict[str, Any]]) -> Controller:
    """A controller in `root`, prepared (config, users, tokens), not yet started."""
    return prepare(Controller(root, free_port(), settings, endpoints))


def threads(ctl: Controller) -> int:
    """The controller process's thread count now."""
    assert ctl.proc is not None
    status = Path(f"/proc/{ctl.proc.pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("Threads:")).split()[1])
