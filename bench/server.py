"""A benchmark controller in its own process: `python -m bench.server DB DATA_DIR PORT`.

Run apart from the benchmark's client so the two do not share one GIL (the client's HTTP and
JSON work would otherwise be charged to the controller)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import uvicorn

from controller.app import create_app
from controller.config.settings import Settings, endpoint_config

ENDPOINT = "bench"
# The benchmark's pilots never heartbeat and most of them wait, registered, for their turn:
# neither they (lost, idle) nor their jobs' leases may run out while a run lasts.
QUIET = 3600.0


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until the controller started as `proc` answers /api/v1/health; a RuntimeError with
    the end of its log if it exits or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the controller did not start:\n" + log.read_text()[-2000:])
        time.sleep(0.05)


def bench_settings(database: Path, data_dir: Path, port: int) -> Settings:
    """One endpoint that never starts a machine (max_machines=0), so the reconcile loop only
    reads the queue; pilots register by hand."""
    return Settings(
        database=database, data_dir=data_dir, host="127.0.0.1", port=port, loop_interval=5.0,
        lease=QUIET,
        endpoints=[endpoint_config(name=ENDPOINT, max_machines=0, cores=64, memory_mb=262144,
                                  slots=64, idle_timeout=QUIET, lost_after=QUIET)],
    )


def main(argv: list[str]) -> None:
    database, data_dir, port = Path(argv[0]), Path(argv[1]), int(argv[2])
    settings = bench_settings(database, data_dir, port)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="error")


if __name__ == "__main__":
    main(sys.argv[1:])
