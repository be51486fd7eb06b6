"""Queue benchmark on SQLite: bulk submission and matching, through HTTP and at the store.

    .venv/bin/python -m bench [--jobs 100000] [--queues 50] [--json] [--profile]

Fills a fresh controller (uvicorn on 127.0.0.1, a random port, a temporary database) with
`--jobs` waiting jobs spread over `--queues` task queues of 3 users, through
POST /api/v1/jobs/bulk; then has pilots claim `--matches` of them through
POST /api/v1/pilots/{id}/match from `--threads` client threads. The same work is then done
on the store directly (controller.store.Store, another temporary database) to show what the
HTTP layer costs. Everything temporary is removed at the end."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.server import ENDPOINT, bench_settings
from controller.api.schemas import BulkIn
from controller.auth import Role
from controller.cli.demo import Server, free_port
from controller.domain.jobs import Job, NewJob, Requirements
from controller.domain.matching import SlotOffer
from controller.store import Store

ROOT = Path(__file__).resolve().parent.parent
USERS = (("alice", "physics"), ("bob", "biology"), ("carol", "physics"))
MACHINE_CORES, MACHINE_MEMORY, MACHINE_SLOTS = 64, 262144, 64
SUBMIT_AIM, MATCH_AIM = 5_000.0, 1_000.0
JOB_TOKEN_MARGIN = 600  # Settings().job_token_margin, as the match API adds it


@dataclass(frozen=True)
class QueueSpec:
    owner: str
    cores: int
    memory_mb: int


@dataclass
class Figure:
    what: str
    count: int
    seconds: float
    aim: float | None = None  # per second; None: for comparison only

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    @property
    def met(self) -> bool | None:
        return None if self.aim is None else self.rate >= self.aim


# the workload ---------------------------------------------------------------------------------
def queue_specs(n: int) -> list[QueueSpec]:
    """n distinct task queues: the owners take turns, memory differs per queue, all fit one
    machine of the benchmark endpoint."""
    return [QueueSpec(USERS[i % len(USERS)][0], 1 + i % 4, 512 + 64 * i) for i in range(n)]


def job_dict(k: int, q: QueueSpec) -> dict[str, Any]:
    return {"executable": "/bin/echo", "arguments": ["bench", str(k)], "name": f"bench-{k}",
            "requirements": {"cores": q.cores, "memory_mb": q.memory_mb, "max_runtime": 3600}}


def new_job(k: int, q: QueueSpec) -> NewJob:
    return NewJob(executable="/bin/echo", arguments=("bench", str(k)), name=f"bench-{k}",
                  requirements=Requirements(cores=q.cores, memory_mb=q.memory_mb,
                                            max_runtime=3600))


def batches(n_jobs: int, specs: list[QueueSpec], size: int) -> list[tuple[str, list[int]]]:
    """(owner, job numbers) per request: job k goes to queue k % Q; each owner's jobs are cut
    into batches, and the owners' batches interleave."""
    per_owner: dict[str, list[int]] = {u: [] for u, _ in USERS}
    for k in range(n_jobs):
        per_owner[specs[k % len(specs)].owner].append(k)
    cut = {u: [ks[i:i + size] for i in range(0, len(ks), size)] for u, ks in per_owner.items()}
    out: list[tuple[str, list[int]]] = []
    for i in range(max((len(b) for b in cut.values()), default=0)):
        out += [(u, b[i]) for u, b in cut.items() if i < len(b)]
    return out


# helpers ---------------------------------------------------------------------------------------
@contextmanager
def profiled(enabled: bool, title: str, top: int = 14) -> Iterator[None]:
    if not enabled:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
        print(f"\n--- profile: {title} (top {top} by own time) ---")
        print("\n".join(lines[max(0, start - 1):]))


@contextmanager
def controller(root: Path, in_thread: bool) -> Iterator[str]:
    """A controller on root/cloudpilot.db; yields its URL."""
    port = free_port()
    db, data = root / "cloudpilot.db", root / "data"
    url = f"http://127.0.0.1:{port}"
    if in_thread:
        with Server(bench_settings(db, data, port)):
            yield url
        return
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.server", str(db), str(data), str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("the controller did not start:\n"
                                   + (root / "server.log").read_text()[-2000:])
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def make_users(store: Store) -> dict[str, str]:
    tokens = {}
    for user, group in USERS:
        store.tokens.create_user(user, group)
        tokens[user] = store.tokens.issue(Role.USER, owner=user, note="bench")
    return tokens


def check_db(path: Path, n_jobs: int, n_queues: int) -> dict[str, int]:
    """What the database holds: jobs by state and the number of task queues."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        states = dict(c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        tqs = c.execute("SELECT COUNT(*) FROM task_queues").fetchone()[0]
    c.close()
    total = sum(states.values())
    if total != n_jobs or tqs != n_queues:
        raise RuntimeError(f"expected {n_jobs} jobs in {n_queues} task queues, "
                           f"found {total} in {tqs}")
    return {**states, "task_queues": tqs}


# HTTP -----------------------------------------------------------------------------------------
def http_submit(url: str, tokens: dict[str, str], plan: list[tuple[str, list[int]]],
                specs: list[QueueSpec]) -> Figure:
    # bodies are encoded before the clock starts: the figure is the controller's
    bodies = [(owner, json.dumps({"jobs": [job_dict(k, specs[k % len(specs)]) for k in ks]}))
              for owner, ks in plan]
    headers = {u: {"Authorization": f"Bearer {t}", "Content-Type": "application/json"}
               for u, t in tokens.items()}
    n = 0
    with httpx.Client(base_url=url, timeout=300) as client:
        t0 = time.perf_counter()
        for owner, body in bodies:
            r = client.post("/api/v1/jobs/bulk", content=body, headers=headers[owner])
            if r.status_code != 201:
                raise RuntimeError(f"bulk submit: HTTP {r.status_code}: {r.text[:500]}")
            n += len(r.json()["ids"])
        dt = time.perf_counter() - t0
    return Figure("bulk submit, HTTP", n, dt, SUBMIT_AIM)


def http_match(url: str, admin_token: str, n_matches: int, n_threads: int,
               per_request: int = 1) -> tuple[Figure, Counter[str]]:
    pilots: list[tuple[str, str]] = []  # (pilot id, its own credential)
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n_threads):
            boot = client.post("/api/v1/admin/tokens", headers=admin,
                               json={"role": "pilot", "endpoint": ENDPOINT}).json()["token"]
            r = client.post("/api/v1/pilots/register", headers={
                "Authorization": f"Bearer {boot}"}, json={
                "machine": f"bench-pilot-{per_request}-{i}", "endpoint": ENDPOINT,
                "cores": MACHINE_CORES, "memory_mb": MACHINE_MEMORY, "slots": MACHINE_SLOTS,
                "version": "bench"})
            if r.status_code != 201:
                raise RuntimeError(f"register: HTTP {r.status_code}: {r.text[:500]}")
            pilots.append((r.json()["pilot_id"], r.json()["token"]))
    # a pilot asks for one job per free slot: `per_request` free slots per request
    offer = json.dumps({"free_cores": MACHINE_CORES, "free_memory_mb": MACHINE_MEMORY,
                        "free_slots": per_request, "wait": 0})
    requests = n_matches // per_request
    share = [requests // n_threads + (i < requests % n_threads) for i in range(n_threads)]
    owners: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads + 1)

    def work(pilot: tuple[str, str], count: int) -> None:
        pilot_id, credential = pilot
        got: Counter[str] = Counter()
        auth = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
        with httpx.Client(base_url=url, timeout=60, headers=auth) as c:
            path = f"/api/v1/pilots/{pilot_id}/match"
            start.wait()
            for _ in range(count):
                r = c.post(path, content=offer)
                if r.status_code == 200:
                    for m in r.json()["matches"]:
                        got[m["job"]["owner"]] += 1
                else:
                    got[f"HTTP {r.status_code}"] += 1
                    if r.status_code != 204:
                        with lock:
                            errors.append(r.text[:300])
        with lock:
            owners.update(got)

    threads = [threading.Thread(target=work, args=(p, k)) for p, k in zip(pilots, share,
                                                                           strict=True)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"match failed {len(errors)} times, e.g. {errors[0]}")
    matched = sum(v for k, v in owners.items() if not k.startswith("HTTP"))
    what = f"match, HTTP, {per_request} job{'s' if per_request > 1 else ''}/request"
    return Figure(what, matched, dt, MATCH_AIM), owners


# store ----------------------------------------------------------------------------------------
def parse_only(plan: list[tuple[str, list[int]]], specs: list[QueueSpec]) -> Figure:
    """What the bulk endpoint does before the database: validate the body, make NewJobs."""
    bodies = [json.dumps({"jobs": [job_dict(k, specs[k % len(specs)]) for k in ks]})
              for _, ks in plan]
    n = 0
    t0 = time.perf_counter()
    for body in bodies:
        n += len([j.to_domain() for j in BulkIn.model_validate_json(body).jobs])
    return Figure("bulk validate only (BulkIn)", n, time.perf_counter() - t0)


def store_submit(store: Store, plan: list[tuple[str, list[int]]], specs: list[QueueSpec],
                 profile: bool) -> Figure:
    groups = dict(USERS)
    work = [(owner, [new_job(k, specs[k % len(specs)]) for k in ks]) for owner, ks in plan]
    n = 0
    with profiled(profile, "store.jobs.submit"):
        t0 = time.perf_counter()
        for owner, jobs in work:
            n += len(store.jobs.submit(jobs, owner, groups[owner], default_retries=3))
        dt = time.perf_counter() - t0
    return Figure("bulk submit, store", n, dt)


def store_match(store: Store, n_matches: int, profile: bool) -> tuple[Figure, Counter[str]]:
    pilot_id, machine = "benchpilot01", "bench-store-pilot"
    store.machines.register_pilot(pilot_id, ENDPOINT, machine, MACHINE_CORES, MACHINE_MEMORY,
                                  [], MACHINE_SLOTS, "bench")
    offer = SlotOffer(endpoint=ENDPOINT, cores=MACHINE_CORES, memory_mb=MACHINE_MEMORY)
    shares = store.tokens.shares()

    def issue(conn: sqlite3.Connection, job: Job) -> str:
        life = job.requirements.max_runtime + JOB_TOKEN_MARGIN
        return store.tokens.issue(Role.JOB, owner=job.owner, job_id=job.id, lifetime=life,
                                  note=f"job {job.id}", conn=conn)

    owners: Counter[str] = Counter()
    with profiled(profile, "store.jobs.match"):
        t0 = time.perf_counter()
        for _ in range(n_matches):
            got = store.jobs.match(pilot_id, machine, offer, by="owner", shares=shares,
                                   issue_token=issue)
            if not got:
                break
            owners[got[0][0].owner] += 1
        dt = time.perf_counter() - t0
    return Figure("match, store (1 thread)", sum(owners.values()), dt), owners


# main -----------------------------------------------------------------------------------------
def table(figures: list[Figure]) -> str:
    head = f"{'what':<32} {'count':>9} {'seconds':>8} {'rate /s':>10}  aim"
    lines = [head, "-" * (len(head) + 18)]
    for f in figures:
        aim = "(for comparison)" if f.aim is None else (
            f">= {f.aim:,.0f}/s  {'OK' if f.met else 'MISSED'}")
        lines.append(f"{f.what:<32} {f.count:>9,} {f.seconds:>8.2f} {f.rate:>10,.0f}  {aim}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="waiting jobs to submit")
    ap.add_argument("--queues", type=int, default=50, help="distinct task queues")
    ap.add_argument("--batch", type=int, default=5_000, help="jobs per bulk request")
    ap.add_argument("--matches", type=int, default=5_000, help="matches to time")
    ap.add_argument("--threads", type=int, default=4, help="concurrent matching clients")
    ap.add_argument("--in-thread", action="store_true",
                    help="run the controller in a thread of this process (controller.cli.demo."
                         "Server) instead of a child process; client and server then share "
                         "one GIL")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the store paths and print the hottest functions")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.queues <= 4000:
        ap.error("--queues must be between 1 and 4000")
    if args.jobs < args.queues or args.matches < 1 or args.threads < 1:
        ap.error("need --jobs >= --queues, --matches >= 1, --threads >= 1")
    if args.matches > args.jobs:
        ap.error("--matches cannot exceed --jobs")
    if not 1 <= args.batch <= 10_000:
        ap.error("--batch must be between 1 and 10000 (the controller's max_bulk_jobs)")

    specs = queue_specs(args.queues)
    plan = batches(args.jobs, specs, args.batch)
    print(f"cloudpilot queue benchmark: {args.jobs:,} jobs in {args.queues} task queues of "
          f"{len(USERS)} users, {len(plan)} bulk requests of <= {args.batch:,}; "
          f"{args.matches:,} matches; SQLite; {os.cpu_count()} CPUs; "
          f"controller {'in a thread' if args.in_thread else 'in a child process'}",
          flush=True)
    figures: list[Figure] = []
    fair: dict[str, dict[str, int]] = {}
    states: dict[str, dict[str, int]] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cloudpilot-bench-") as tmp:
        # 1 + 2 over HTTP
        root = Path(tmp) / "http"
        store = Store(root / "cloudpilot.db")
        tokens = make_users(store)
        admin_token = store.tokens.issue(Role.ADMIN, note="bench")
        store.close()
        with controller(root, args.in_thread) as url:
            print(f"controller on {url}; submitting...", flush=True)
            figures.append(http_submit(url, tokens, plan, specs))
            states["http"] = check_db(root / "cloudpilot.db", args.jobs, args.queues)
            print("matching...", flush=True)
            f, owners = http_match(url, admin_token, args.matches, args.threads)
            figures.append(f)
            fair["http"] = dict(owners)
            f, owners = http_match(url, admin_token, args.matches, args.threads, per_request=8)
            figures.append(f)
            fair["http, 8-slot pilots"] = dict(owners)
        # the same at the store
        print("store paths...", flush=True)
        figures.append(parse_only(plan, specs))
        root = Path(tmp) / "store"
        store = Store(root / "cloudpilot.db")
        try:
            make_users(store)
            figures.append(store_submit(store, plan, specs, args.profile))
            states["store"] = check_db(root / "cloudpilot.db", args.jobs, args.queues)
            f, owners = store_match(store, args.matches, args.profile)
            figures.append(f)
            fair["store"] = dict(owners)
        finally:
            store.close()
    total = time.perf_counter() - t_all
    figures = [figures[i] for i in (0, 3, 4, 1, 2, 5)]  # the submit rows, then the match rows
    print()
    print(table(figures))
    print(f"\nafter submission (HTTP db): {states['http']}")
    for where, got in fair.items():
        print(f"matches by owner ({where}): "
              + ", ".join(f"{k} {v:,}" for k, v in sorted(got.items())))
    print(f"total run time {total:.1f}s")
    if args.json:
        print(json.dumps({
            "params": {k: getattr(args, k) for k in ("jobs", "queues", "batch", "matches",
                                                      "threads", "in_thread")},
            "figures": [{**asdict(f), "rate": round(f.rate, 1), "met": f.met}
                        for f in figures],
            "matches_by_owner": fair,
            "total_seconds": round(total, 2),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
