"""Many pilots against one controller, with users submitting and listing at the same time.

    .venv/bin/python -m bench.load [--pilots 1000] [--workers 2] [--rate 100] [--seconds 30]

A real controller (`cloudpilot serve`, a random port on 127.0.0.1, a temporary database);
`--pilots` simulated pilots (asyncio + httpx, split over `--workers` processes) register,
long-poll for work, heartbeat every `--heartbeat` s, "run" each job for `--job-seconds` and
report it done; meanwhile users submit `--rate` jobs per second (bulk requests with an
Idempotency-Key) and list jobs, for `--seconds`. Before any job exists, every pilot waits in a
long-poll and the controller's thread count is sampled: a waiting pilot holds no thread (and
no database connection: the store has one, shared).

Also measures what idle pilots cost: with every pilot waiting in a long-poll (an idle pilot
sends no heartbeats), the controller's CPU time over `--idle` seconds, per 1,000 pilots; and the
load generator's own CPU beside it (on a 2-core machine it competes with the controller).

Prints matches/s, p50/p99 of match (from the submission request to the pilot holding the
job), heartbeat, report and list, and every error. Everything is bounded in time."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.harness import bootstrap_tokens, make_controller, threads
from controller.harness import REPO as ROOT
from controller.harness import Controller

ENDPOINT = "load"


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# a worker process: many pilots ---------------------------------------------------------------
class Pilots:
    def __init__(self, url: str, tokens: list[str], heartbeat: float, job_seconds: float,
                 stop_file: Path, tags: list[str] | None = None) -> None:
        self.url, self.tokens = url, tokens  # one bootstrap token per pilot
        self.tags = tags or []  # what the pilots' machines have (bench.wake: not what fits)
        self.ssl = ssl.create_default_context()  # one for all: making one costs ~20 ms
        self.heartbeat, self.job_seconds, self.stop_file = heartbeat, job_seconds, stop_file
        self.lat: dict[str, list[float]] = {"register": [], "heartbeat": [], "report": []}
        self.matched: list[tuple[float, float, int]] = []  # (request start, answer, job id)
        self.errors: Counter[str] = Counter()
        self.stopping = False

    def client(self, token: str) -> httpx.AsyncClient:
        """One client per pilot, as real pilots have (one pool shared by hundreds of
        concurrent requests costs the client more CPU than the controller spends on them),
        and a new connection per request, as the pilot's urllib makes (a kept-alive one may
        be closed by uvicorn's keep-alive timeout under a late request of a busy client)."""
        return httpx.AsyncClient(base_url=self.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"},
                                 verify=self.ssl,
                                 limits=httpx.Limits(max_keepalive_connections=0))

    async def call(self, http: httpx.AsyncClient, kind: str, path: str,
                   body: Any) -> httpx.Response | None:
        t0 = time.time()
        try:
            r = await http.post(path, json=body)
        except httpx.HTTPError as e:
            self.errors[f"{kind}: {type(e).__name__}"] += 1
            return None
        if r.status_code >= 400:
            self.errors[f"{kind}: HTTP {r.status_code} {r.text[:80]}"] += 1
            return None
        if kind in self.lat:
            self.lat[kind].append(time.time() - t0)
        return r

    async def pilot(self, n: int, ready: asyncio.Event, registered: list[int]) -> None:
        boot = self.client(self.tokens[n])
        r = await self.call(boot, "register", "/api/v1/pilots/register", {
            "machine": f"load-{uuid.uuid4().hex[:10]}", "cores": 1, "memory_mb": 1024,
            "slots": 1, "tags": self.tags})
        await boot.aclose()
        registered.append(1)
        if r is None:
            return
        pid = r.json()["pilot_id"]
        http = self.client(r.json()["token"])  # the pilot's own credential from now on
        await ready.wait()
        held: dict[int, None] = {}
        beat = asyncio.create_task(self.beats(http, pid, held))
        while not self.stopping:
            t0 = time.time()
            r = await self.call(http, "match", f"/api/v1/pilots/{pid}/match", {
                "free_cores": 1, "free_memory_mb": 1024, "free_slots": 1, "wait": 20})
            if r is None or r.status_code == 204:
                if r is None:
                    await asyncio.sleep(1)
                continue
            t1 = time.time()
            for m in r.json()["matches"]:
                job = m["job"]["id"]
                self.matched.append((t0, t1, job))
                held[job] = None
                await self.call(http, "heartbeat", f"/api/v1/pilots/{pid}/heartbeat",
                                {"jobs": [{"id": job, "progress": None}]})
                await asyncio.sleep(self.job_seconds)
                await self.call(http, "report", f"/api/v1/pilots/{pid}/jobs/{job}/report",
                                {"status": "done", "exit_code": 0})
                held.pop(job, None)
        beat.cancel()
        await http.aclose()

    async def beats(self, http: httpx.AsyncClient, pid: str, held: dict[int, None]) -> None:
        """As the pilot does: a heartbeat for the jobs held, none while idle (its long-poll
        keeps it known alive)."""
        while True:
            await asyncio.sleep(self.heartbeat)
            if not held:
                continue
            await self.call(http, "heartbeat", f"/api/v1/pilots/{pid}/heartbeat",
                            {"jobs": [{"id": j, "progress": None} for j in held]})

    async def run(self, n: int) -> dict[str, Any]:
        ready, registered = asyncio.Event(), []
        tasks = [asyncio.create_task(self.pilot(i, ready, registered)) for i in range(n)]
        while len(registered) < n:
            await asyncio.sleep(0.05)
        ready.set()
        print("ready", flush=True)
        while not self.stop_file.exists():
            await asyncio.sleep(0.2)
        self.stopping = True
        await asyncio.wait(tasks, timeout=30)
        return {"lat": self.lat, "matched": self.matched, "errors": dict(self.errors)}


def worker(args: argparse.Namespace) -> None:
    tokens = Path(args.tokens).read_text().split()
    p = Pilots(args.url, tokens, args.heartbeat, args.job_seconds, Path(args.stop_file),
               args.tags.split(",") if args.tags else [])
    out = asyncio.run(p.run(args.pilots))
    print(json.dumps(out), flush=True)


# the driver: controller, users, workers ------------------------------------------------------
async def users(ctl: Controller, rate: float, seconds: float,
                errors: Counter[str]) -> tuple[dict[int, float], list[float], list[float]]:
    """Submit `rate` jobs/s for `seconds` (10 bulk requests a second) and list jobs twice a
    second; return each job id's submission time and the submit and list latencies."""
    sent: dict[int, float] = {}
    submit_lat: list[float] = []
    list_lat: list[float] = []
    per = max(1, round(rate / 10))
    job = {"executable": "/bin/true", "requirements": {"cores": 1, "memory_mb": 512,
                                                       "max_runtime": 600}}
    async with httpx.AsyncClient(base_url=ctl.url, timeout=60,
                                 limits=httpx.Limits(keepalive_expiry=2.0)) as http:
        hdr = {u: {"Authorization": f"Bearer {ctl.tokens[u]}"} for u in ("alice", "bob")}

        async def submit(k: int) -> None:
            t0 = time.time()
            try:
                r = await http.post("/api/v1/jobs/bulk", json={"jobs": [job] * per},
                                    headers={**hdr["alice" if k % 2 else "bob"],
                                             "Idempotency-Key": uuid.uuid4().hex})
            except httpx.HTTPError as e:
                errors[f"submit: {type(e).__name__}"] += 1
                return
            if r.status_code != 201:
                errors[f"submit: HTTP {r.status_code} {r.text[:80]}"] += 1
                return
            submit_lat.append(time.time() - t0)
            for i in r.json()["ids"]:
                sent[i] = t0

        async def lister() -> None:
            while True:
                t0 = time.time()
                try:
                    r = await http.get("/api/v1/jobs", params={"limit": 100, "state": "running"},
                                       headers=hdr["alice"])
                    if r.status_code != 200:
                        errors[f"list: HTTP {r.status_code}"] += 1
                    else:
                        list_lat.append(time.time() - t0)
                except httpx.HTTPError as e:
                    errors[f"list: {type(e).__name__}"] += 1
                await asyncio.sleep(0.5)

        listing = asyncio.create_task(lister())
        pending = []
        start = time.monotonic()
        for k in range(int(seconds * 10)):
            pending.append(asyncio.create_task(submit(k)))
            await asyncio.sleep(max(0.0, start + (k + 1) / 10 - time.monotonic()))
        await asyncio.gather(*pending)
        listing.cancel()
    return sent, submit_lat, list_lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--pilots", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="client processes (1 or 2)")
    ap.add_argument("--rate", type=float, default=100, help="jobs submitted per second")
    ap.add_argument("--seconds", type=float, default=30, help="how long users submit")
    ap.add_argument("--job-seconds", type=float, default=2.0)
    ap.add_argument("--heartbeat", type=float, default=10.0)
    ap.add_argument("--idle", type=float, default=20.0,
                    help="seconds the idle pilots' cost is measured over (0: skip)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", help=argparse.SUPPRESS)
    ap.add_argument("--stop-file", help=argparse.SUPPRESS)
    ap.add_argument("--tags", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="cloudpilot-load-") as tmp:
        return drive(args, Path(tmp))


def drive(args: argparse.Namespace, tmp: Path) -> int:
    endpoint = {"name": ENDPOINT, "driver": "local", "max_machines": 0, "cores": 1,
                "memory_mb": 1024, "slots": 1, "heartbeat_interval": args.heartbeat,
                "lost_after": 300}
    ctl = make_controller(tmp, {"loop_interval": 2.0, "long_poll_max": 30, "lease": 120},
                          [endpoint])
    ctl.start()
    stop_file = tmp / "stop"
    procs = []
    errors: Counter[str] = Counter()
    try:
        share = [args.pilots // args.workers + (i < args.pilots % args.workers)
                 for i in range(args.workers)]
        for i, n in enumerate(share):
            tokens = tmp / f"tokens-{i}"  # a one-time bootstrap token per pilot
            tokens.write_text("\n".join(bootstrap_tokens(ctl, ENDPOINT, n)))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.load", "--worker", "--pilots", str(n),
                 "--url", ctl.url, "--tokens", str(tokens),
                 "--stop-file", str(stop_file), "--heartbeat", str(args.heartbeat),
                 "--job-seconds", str(args.job_seconds)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True))
        t_reg = time.monotonic()
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker did not start")
        t_reg = time.monotonic() - t_reg
        time.sleep(2.0)  # every pilot now waits in a long-poll on an empty queue
        idle_threads = max(threads(ctl) for _ in range(10) if time.sleep(0.1) is None)
        # what idle pilots cost: every pilot long-polls, no job exists
        pids = [ctl.proc.pid] + [p.pid for p in procs]
        before, t_idle = [cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(args.idle)
        t_idle = time.monotonic() - t_idle
        idle_cpu = [(cpu_seconds(p) - b) / t_idle for p, b in zip(pids, before, strict=True)]
        t0 = time.monotonic()
        sent, submit_lat, list_lat = asyncio.run(users(ctl, args.rate, args.seconds, errors))
        with ctl.client() as c:  # let the queue drain (bounded)
            deadline = time.monotonic() + 30 + args.job_seconds
            while time.monotonic() < deadline:
                counts = c.get("/api/v1/summary").json().get("jobs", {})
                if not counts.get("waiting") and not counts.get("matched") \
                        and not counts.get("running"):
                    break
                time.sleep(0.5)
        span = time.monotonic() - t0
        stop_file.touch()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=60)
            results.append(json.loads(out.strip().splitlines()[-1]))
        with ctl.client() as c:
            final = c.get("/api/v1/summary").json().get("jobs", {})
    finally:
        stop_file.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
        ctl.stop()
    lat: dict[str, list[float]] = {"register": [], "heartbeat": [], "report": []}
    match_lat = []
    for r in results:
        for k in lat:
            lat[k] += r["lat"][k]
        errors.update(r["errors"])
        for t_req, t_ans, job in r["matched"]:
            if job in sent:
                match_lat.append(t_ans - max(t_req, sent[job]))
    n_matched = sum(len(r["matched"]) for r in results)
    ms = 1000.0
    print(f"bench.load: {args.pilots} pilots in {args.workers} processes, users submitting "
          f"{args.rate:.0f} jobs/s for {args.seconds:.0f}s (jobs 'run' {args.job_seconds}s, "
          f"heartbeat every {args.heartbeat:.0f}s)")
    print(f"  registered all pilots in {t_reg:.1f}s; controller threads while all "
          f"{args.pilots} pilots wait in a long-poll: {idle_threads}")
    if args.idle > 0:
        print(f"  idle: the controller used {idle_cpu[0]:.2f} cores with {args.pilots} pilots "
              f"waiting = {idle_cpu[0] * 1000 / args.pilots:.2f} cores per 1,000 idle pilots "
              f"(aim: 5,000 under 0.5, i.e. 0.10 per 1,000); load generator "
              f"{sum(idle_cpu[1:]):.2f} cores, over {t_idle:.0f}s")
    print(f"  jobs submitted {len(sent)}, matched {n_matched}, final states {final}")
    print(f"  matches/s {n_matched / span:.1f} (over {span:.1f}s)")
    rows = [("match (submit -> pilot holds it)", match_lat), ("heartbeat", lat["heartbeat"]),
            ("report", lat["report"]), ("submit (bulk)", submit_lat), ("list", list_lat),
            ("register", lat["register"])]
    for name, xs in rows:
        print(f"  {name:34} n={len(xs):6}  p50 {pct(xs, 50) * ms:7.1f} ms  "
              f"p99 {pct(xs, 99) * ms:7.1f} ms"
              + (f"  mean {statistics.fmean(xs) * ms:6.1f} ms" if xs else ""))
    print(f"  errors {sum(errors.values())}" + "".join(f"\n    {n} x {e}"
                                                      for e, n in errors.most_common()))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
