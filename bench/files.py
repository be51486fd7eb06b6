"""Job files benchmark (issue 22): N jobs each return a file of SIZE bytes, sent by the pilot's
own upload code (pilot/files.py) from THREADS pilots at once, then downloaded and checked by
the client's (ApiClient.download), on the folder store and on an S3 store (moto's server,
started here). Its ceiling, in the same run and with the same threads: a bare FastAPI app in
its own process that stores each PUT body in a file and serves it back (no database, no
token, no checksum).

    python -m bench.files [--jobs 1000] [--size 1048576] [--threads 8] [--store folder,s3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse

from bench.server import wait_healthy
from controller.auth import Role
from controller.cli.client import ApiClient
from controller.cli.demo import free_port
from controller.store import Store
from pilot.client import Client
from pilot.files import upload

ROOT = Path(__file__).resolve().parents[1]


def bare_app() -> FastAPI:
    api = FastAPI()
    where = Path(os.environ["BARE_DIR"])

    @api.put("/f/{n}")
    async def put(n: int, request: Request) -> Response:
        (where / str(n)).write_bytes(await request.body())
        return Response(status_code=204)

    @api.get("/f/{n}")
    def get(n: int) -> FileResponse:
        return FileResponse(where / str(n))

    @api.get("/api/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


@contextmanager
def process(cmd: list[str], url: str, log: Path, env: dict[str, str] | None = None
            ) -> Iterator[None]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        wait_healthy(url, proc, log, 120)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def timed(threads: int, items: list[Any], fn: Callable[[Any], None]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - start


def ceiling(root: Path, jobs: int, data: bytes, threads: int) -> tuple[float, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    d = root / "bare"
    d.mkdir()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench.files:bare_app", "--port",
           str(port), "--log-level", "error"]
    with process(cmd, url, root / "bare.log", {"BARE_DIR": str(d)}), \
            httpx.Client(base_url=url, timeout=60) as http:
        up = timed(threads, list(range(jobs)),
                   lambda n: http.put(f"/f/{n}", content=data).raise_for_status())
        down = timed(threads, list(range(jobs)),
                     lambda n: http.get(f"/f/{n}").raise_for_status().content)
    return up, down


def run(root: Path, store: str, s3_url: str | None, jobs: int, data: bytes,
        threads: int) -> tuple[float, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = root / f"{store}.db"
    extra = {}
    if store == "s3":
        extra = {"file_store": f"s3://bench-{port}/files", "file_store_endpoint_url": s3_url,
                 "file_store_region": "us-east-1"}
        import boto3

        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(
            Bucket=f"bench-{port}")
    cfg: dict[str, Any] = {
        "database": str(db), "data_dir": str(root / f"{store}-data"), "port": port,
        "lease": 3600, "max_bulk_jobs": jobs, "owner_quota_bytes": None, **extra,
           "endpoints": [{"name": "bench", "driver": "local", "max_machines": 0, "cores": 1024,
                          "memory_mb": 262144, "slots": 64, "idle_timeout": 3600,
                          "lost_after": 3600}]}
    endpoints = cfg.pop("endpoints")
    lines = [f"{k} = {json.dumps(v)}" for k, v in cfg.items() if v is not None]
    for ep in endpoints:
        lines += ["[[endpoints]]", *(f"{k} = {json.dumps(v)}" for k, v in ep.items())]
    (root / f"{store}.toml").write_text("\n".join(lines) + "\n")
    s = Store(db)
    s.tokens.create_user("alice", "physics")
    user = s.tokens.issue(Role.USER, owner="alice")
    boots = [s.tokens.issue(Role.PILOT, endpoint="bench") for _ in range(threads)]
    s.close()
    env = {"CLOUDPILOT_CONFIG": str(root / f"{store}.toml")}
    with process([sys.executable, "-m", "controller", "serve"], url, root / f"{store}.log",
                 env):
        api = ApiClient(url, user, timeout=120)
        ids = api.submit([{"executable": "/bin/true", "outputs": ["out.bin"]}] * jobs)["ids"]
        # THREADS pilots take every job (matching is not timed)
        held: list[tuple[Client, str, int, int]] = []
        for i, boot in enumerate(boots):
            c = Client(url, boot)
            reg = c.call("POST", "/api/v1/pilots/register", {
                "machine": f"b{i}", "cores": 1024, "memory_mb": 262144, "slots": 1024})
            c.token = reg["token"]
            share = len(ids) // threads + (1 if i < len(ids) % threads else 0)
            while share > 0:
                got = (c.call("POST", f"/api/v1/pilots/{reg['pilot_id']}/match", {
                    "free_cores": 1024, "free_memory_mb": 262144, "free_slots": 1024,
                    "count": min(share, 500), "wait": 1}) or {"matches": []})["matches"]
                share -= len(got)
                held += [(c, reg["pilot_id"], m["job"]["id"], m["attempt"]) for m in got]
        jobdir = root / f"{store}-job"
        jobdir.mkdir()
        (jobdir / "out.bin").write_bytes(data)
        limits = {"max_output_files_bytes": 1 << 40, "max_output_files": 10}

        def send(h: tuple[Client, str, int, int]) -> None:
            c, pid, jid, attempt = h
            fd = os.open(jobdir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                why = upload(c, f"/api/v1/pilots/{pid}/jobs/{jid}", attempt, fd, ["out.bin"],
                             limits)
                assert why is None, why
            finally:
                os.close(fd)

        up = timed(threads, held, send)
        out = root / f"{store}-out"

        def fetch(jid: int) -> None:
            (got,) = api.download(jid, out / str(jid))
            assert got.stat().st_size == len(data)

        down = timed(threads, ids, fetch)
    return up, down


@contextmanager
def moto(root: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=open(root / "moto.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024 * 1024)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--store", default="folder,s3")
    args = ap.parse_args(argv)
    data = os.urandom(args.size)
    mb = args.jobs * args.size / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        root = Path(tmp)
        rows = [("bare FastAPI (ceiling)", *ceiling(root, args.jobs, data, args.threads))]
        for store in args.store.split(","):
            if store == "s3":
                with moto(root) as url:
                    rows.append(("s3 (moto)", *run(root, store, url, args.jobs, data,
                                                   args.threads)))
            else:
                rows.append((store, *run(root, store, None, args.jobs, data, args.threads)))
    print(f"{args.jobs} files of {args.size} bytes, {args.threads} threads "
          f"({mb:.0f} MB each way)")
    print(f"{'store':24} {'upload MB/s':>12} {'download MB/s':>14}")
    for name, up, down in rows:
        print(f"{name:24} {mb / up:12.1f} {mb / down:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
