"""The ceiling of the match benchmark: a bare FastAPI POST, served as the benchmark controller
is (uvicorn, its own process, 127.0.0.1) and asked by the same client threads, in the same run:
`python -m bench.bare PORT` serves it. Its route reads a body like a match request's and
answers a job-sized JSON body; it touches no database and checks no token."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from bench.clients import make_client
from bench.server import wait_healthy
from controller.cli.demo import free_port

ROOT = Path(__file__).resolve().parents[1]


class Asked(BaseModel):
    free_cores: int
    free_memory_mb: int
    free_slots: int
    count: int | None = None
    wait: float = 0


def app() -> FastAPI:
    api = FastAPI()

    @api.post("/api/v1/pilots/{pilot_id}/match")
    def match(pilot_id: str, body: Asked) -> dict[str, object]:
        return {"matches": [{"job": {"id": 1, "owner": "alice", "executable": "/bin/true",
                                     "arguments": [], "state": "matched"},
                             "token": "t" * 43, "attempt": 1, "lease": 60.0}]}

    @api.get("/api/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """The bare app in its own process; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "bare.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc, root / "bare.log", 120)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def ceiling(root: Path, n_requests: int, n_threads: int, kind: str = "httpx") -> tuple[int,
                                                                                     float]:
    """Requests answered and the seconds they took: `n_threads` threads, each with its own
    client of `kind`, posting match-like bodies to the bare app."""
    body = b'{"free_cores": 8, "free_memory_mb": 16384, "free_slots": 1, "count": 1}'
    done = [0] * n_threads
    with serve(root) as url:
        def one(i: int) -> None:
            client = make_client(kind, url)
            try:
                for _ in range(n_requests // n_threads):
                    status, _ = client.post("/api/v1/pilots/p/match", body, "token")
                    done[i] += status == 200
            finally:
                client.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n_threads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done), time.perf_counter() - t0


if __name__ == "__main__":
    uvicorn.run(app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
