"""Queue benchmark on SQLite: bulk submission and matching, through HTTP and at the store.

    .venv/bin/python -m bench [--jobs 100000] [--queues 50] [--json] [--profile]
    .venv/bin/python -m bench --queues 50,200,1000,4000 [--jobs 20000] [--matches 3000]
    .venv/bin/python -m bench --backend postgres --workers 1,2,4

Fills a fresh controller (uvicorn on 127.0.0.1, a random port, a temporary database) with
`--jobs` waiting jobs spread over `--queues` task queues of 3 users, through
POST /api/v1/jobs/bulk; then has pilots claim `--matches` of them through
POST /api/v1/pilots/{id}/match from `--threads` client threads. The same work is then done
on the store directly (controller.store.Store, another temporary database) to show what the
HTTP layer costs. Everything temporary is removed at the end.

With `--backend postgres` the same HTTP phases run, side by side in one run, on SQLite (one
controller process) and on PostgreSQL (a fresh database per `--workers` figure, the controller
started as `python -m controller serve --workers N`), from client processes that count their
own CPU time (bench/backends.py).

With several `--queues` figures the run is a sweep: the same jobs in each number of task
queues, matched over HTTP (1 job a request) and at the store, each rate beside the first
figure's (a match's cost should not grow with the task queues)."""

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
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import bare, clients
from bench.clients import MatchWork, SubmitWork, pilots_needed
from bench.server import ENDPOINT, bench_settings, wait_healthy
from bench.workload import (
    MACHINE_CORES,
    MACHINE_MEMORY,
    MACHINE_SLOTS,
    USERS,
    QueueSpec,
    batches,
    bodies,
    job_dict,
    largest_job,
    make_users,
    new_job,
    queue_specs,
)
from controller.api.schemas import BulkIn
from controller.auth import Role
from controller.cli.demo import Server, free_port
from controller.domain.matching import SlotOffer
from controller.store import Store

ROOT = Path(__file__).resolve().parent.parent
SUBMIT_AIM, MATCH_AIM = 5_000.0, 1_000.0
JOB_TOKEN_MARGIN = 600  # Settings().job_token_margin, as the match API adds it


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
        wait_healthy(url, proc, root / "server.log", 120)  # a loaded machine imports slowly
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
    # bodies are encoded before the clock starts: the figure is the controller's; one client
    # sends them one after the other
    work = SubmitWork([bodies(plan, specs, tokens)])
    got = clients.run(url, [work], in_process=True, client_kind="httpx")
    return Figure("bulk submit, HTTP", got.count, got.seconds, SUBMIT_AIM)


def http_match(url: str, admin_token: str, n_matches: int, n_threads: int,
               specs: list[QueueSpec], per_request: int = 1) -> tuple[Figure, Counter[str]]:
    """`n_threads` client threads of this process, each with its own pilots (as many as its
    share of the matches needs: a pilot holds what it gets, bench/clients.py), each request
    asking for `per_request` jobs (a job per free slot)."""
    work = MatchWork(targets=clients.shares(n_matches, n_threads), per_request=per_request,
                     admin_token=admin_token, endpoint=ENDPOINT,
                     machine=(MACHINE_CORES, MACHINE_MEMORY, MACHINE_SLOTS),
                     largest_job=largest_job(specs), tag=f"{per_request}")
    got = clients.run(url, [work], in_process=True, client_kind="httpx")
    if got.errors:
        raise RuntimeError(f"match failed {len(got.errors)} times, e.g. {got.errors[0]}")
    owners = Counter(got.owners)
    if got.empty:
        owners["HTTP 204"] = got.empty
    what = f"match, HTTP, {per_request} job{'s' if per_request > 1 else ''}/request"
    return Figure(what, got.count, got.seconds, MATCH_AIM), owners


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


def store_match(store: Store, n_matches: int, specs: list[QueueSpec],
                profile: bool) -> tuple[Figure, Counter[str]]:
    """Claims one job a call; a pilot holds what it is given (the store bounds it by what it
    registered), so enough pilots are registered first and the next one is asked when one
    gets nothing."""
    need = pilots_needed(n_matches, (MACHINE_CORES, MACHINE_MEMORY, MACHINE_SLOTS),
                         largest_job(specs))
    pilots = [(f"benchpilot{i:04d}", f"bench-store-pilot-{i}") for i in range(need)]
    for pilot_id, machine in pilots:
        store.machines.register_pilot(pilot_id, ENDPOINT, machine, MACHINE_CORES,
                                      MACHINE_MEMORY, [], MACHINE_SLOTS, "bench")
    offer = SlotOffer(endpoint=ENDPOINT, cores=MACHINE_CORES, memory_mb=MACHINE_MEMORY)
    shares = store.tokens.shares()

    owners: Counter[str] = Counter()
    at = 0
    with profiled(profile, "store.jobs.match"):
        t0 = time.perf_counter()
        for _ in range(n_matches):
            got = store.jobs.match(*pilots[at], offer, by="owner", shares=shares,
                                   token_margin=JOB_TOKEN_MARGIN).jobs
            while not got and at + 1 < len(pilots):  # that pilot is full: the next one
                at += 1
                got = store.jobs.match(*pilots[at], offer, by="owner", shares=shares,
                                       token_margin=JOB_TOKEN_MARGIN).jobs
            if not got:
                break
            owners[got[0][0].owner] += 1
        dt = time.perf_counter() - t0
    return Figure("match, store (1 thread)", sum(owners.values()), dt), owners


# the task-queue sweep -------------------------------------------------------------------------
def queue_sweep(args: argparse.Namespace, counts: list[int]) -> int:
    """The same jobs in each number of task queues: matches over HTTP (1 job a request, from
    --threads client threads) and at the store (one thread), each beside the first count's."""
    print(f"cloudpilot task-queue sweep: {args.jobs:,} jobs in {counts} task queues; "
          f"{args.matches:,} matches each; SQLite; {os.cpu_count()} CPUs", flush=True)
    rows: list[tuple[int, Figure, Figure]] = []
    with tempfile.TemporaryDirectory(prefix="cloudpilot-bench-") as tmp:
        for n in counts:
            specs = queue_specs(n)
            plan = batches(args.jobs, specs, args.batch)
            root = Path(tmp) / f"http-{n}"
            store = Store(root / "cloudpilot.db")
            tokens = make_users(store)
            admin_token = store.tokens.issue(Role.ADMIN, note="bench")
            store.close()
            with controller(root, args.in_thread) as url:
                http_submit(url, tokens, plan, specs)
                check_db(root / "cloudpilot.db", args.jobs, n)
                http, _ = http_match(url, admin_token, args.matches, args.threads, specs)
            store = Store(Path(tmp) / f"store-{n}" / "cloudpilot.db")
            try:
                make_users(store)
                store_submit(store, plan, specs, False)
                at_store, _ = store_match(store, args.matches, specs, False)
            finally:
                store.close()
            rows.append((n, http, at_store))
            print(f"{n:>6} task queues: HTTP {http.rate:,.0f}/s, store {at_store.rate:,.0f}/s",
                  flush=True)
    base_http, base_store = rows[0][1].rate, rows[0][2].rate
    print(f"\n{'task queues':>11} {'HTTP /s':>9} {'vs first':>8} {'store /s':>9} {'vs first':>8}")
    for n, http, at_store in rows:
        print(f"{n:>11,} {http.rate:>9,.0f} {http.rate / base_http:>8.0%} "
              f"{at_store.rate:>9,.0f} {at_store.rate / base_store:>8.0%}")
    print("aim: every count at least 80 % of the first")
    if args.json:
        print(json.dumps([{"queues": n, "http_per_s": round(h.rate, 1),
                           "store_per_s": round(st.rate, 1)} for n, h, st in rows], indent=2))
    return 0


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
    ap.add_argument("--queues", default="50", metavar="N[,N...]",
                    help="distinct task queues; several: a sweep over them")
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
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                    help="postgres: the HTTP phases on SQLite (one process), then on a fresh "
                         "PostgreSQL database for each --workers figure, in one table")
    ap.add_argument("--workers", default="1", metavar="N[,N...]",
                    help="--backend postgres: controller processes, one run each (default 1)")
    ap.add_argument("--client-procs", type=int, default=2, metavar="P",
                    help="--backend postgres: load generator processes the --threads clients "
                         "are split over (default 2)")
    ap.add_argument("--phase-limit", type=float, default=30.0, metavar="SECONDS",
                    help="--backend postgres: a match phase stops after this (default 30)")
    ap.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="--backend postgres: the long-poll each match request allows "
                         "(default 0, as `python -m bench` asks: a pilot that is not handed a "
                         "job at once is answered 204 and asks again)")
    ap.add_argument("--connection", choices=("per-request", "keep-alive"),
                    default="per-request",
                    help="--backend postgres: a connection for each request, as the real "
                         "pilot (default), or one kept alive per client")
    ap.add_argument("--keep", action="store_true",
                    help="--backend postgres: keep the databases and the logs (under /var/tmp)")
    args = ap.parse_args(argv)
    try:
        args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    except ValueError:
        ap.error("--workers: a comma list of numbers, e.g. 1,2,4")
    if not args.workers or not all(1 <= w <= 64 for w in args.workers):
        ap.error("--workers: numbers between 1 and 64")
    if args.backend == "sqlite" and args.workers != [1]:
        ap.error("--workers above 1 needs --backend postgres (SQLite serves from one process)")
    if args.backend == "postgres" and not 1 <= args.client_procs <= args.threads:
        ap.error("--client-procs must be between 1 and --threads")
    try:
        sweep = [int(q) for q in str(args.queues).split(",") if q.strip()]
    except ValueError:
        ap.error("--queues: a number or a comma list, e.g. 50,200,1000,4000")
    if not sweep or not all(1 <= q <= 4000 for q in sweep):
        ap.error("--queues must be between 1 and 4000")
    args.queues = max(sweep)
    if args.jobs < args.queues or args.matches < 1 or args.threads < 1:
        ap.error("need --jobs >= --queues, --matches >= 1, --threads >= 1")
    if args.matches > args.jobs:
        ap.error("--matches cannot exceed --jobs")
    if not 1 <= args.batch <= 10_000:
        ap.error("--batch must be between 1 and 10000 (the controller's max_bulk_jobs)")

    if len(sweep) > 1:
        if args.backend != "sqlite":
            ap.error("a --queues sweep runs on SQLite")
        return queue_sweep(args, sweep)
    args.queues = sweep[0]
    if args.backend == "postgres":
        if args.in_thread or args.profile:
            ap.error("--in-thread and --profile are for --backend sqlite")
        from bench import backends

        return backends.run(args)

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
            f, owners = http_match(url, admin_token, args.matches, args.threads, specs)
            figures.append(f)
            fair["http"] = dict(owners)
            f, owners = http_match(url, admin_token, args.matches, args.threads, specs,
                                   per_request=8)
            figures.append(f)
            fair["http, 8-slot pilots"] = dict(owners)
        # the ceiling: a bare FastAPI POST, the same client threads, in the same run
        print("bare FastAPI POST (the ceiling)...", flush=True)
        n, dt = bare.ceiling(Path(tmp), args.matches, args.threads)
        figures.append(Figure("ceiling: bare FastAPI POST, HTTP", n, dt))
        # the same at the store
        print("store paths...", flush=True)
        figures.append(parse_only(plan, specs))
        root = Path(tmp) / "store"
        store = Store(root / "cloudpilot.db")
        try:
            make_users(store)
            figures.append(store_submit(store, plan, specs, args.profile))
            states["store"] = check_db(root / "cloudpilot.db", args.jobs, args.queues)
            f, owners = store_match(store, args.matches, specs, args.profile)
            figures.append(f)
            fair["store"] = dict(owners)
        finally:
            store.close()
    total = time.perf_counter() - t_all
    figures = [figures[i] for i in (0, 4, 5, 3, 1, 2, 6)]  # submit, then ceiling and matches
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
