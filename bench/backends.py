"""`python -m bench --backend postgres --workers 1,2,4`: the queue benchmark's HTTP phases on
SQLite and on PostgreSQL, side by side in one run and one table.

First SQLite, one controller process; then, for each N in --workers, a fresh database on one
PostgreSQL server (tests/pgserver.py: initdb under /var/tmp, run as `postgres`) and a
controller started as `python -m controller serve --config FILE --workers N`. Each gets the
same three phases: bulk submission of --jobs waiting jobs, then --matches matches with pilots
asking for 1 job a request, then for a job per free slot (8 a request); a match phase stops
after --phase-limit seconds, and its rate is over what it did by then. The load generator is
--threads HTTP clients split over --client-procs processes (bench/clients.py), each counting
its own CPU time, with a connection per request as the real pilot (--connection); the
controller's CPU (the server process and its workers) and PostgreSQL's (the postmaster and its
backends) are read from /proc before and after each phase. After submission the database must
hold exactly the jobs submitted, and after matching exactly the jobs matched must have left
the queue, each given to one pilot; the controller's log is searched for tracebacks and 5xx
answers. Any such problem is listed at the end and the exit status is 1."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import clients
from bench.clients import MatchWork, Outcome, SubmitWork
from bench.server import ENDPOINT, QUIET, wait_healthy
from bench.workload import (
    MACHINE_CORES,
    MACHINE_MEMORY,
    MACHINE_SLOTS,
    USERS,
    QueueSpec,
    batches,
    bodies,
    largest_job,
    make_users,
    queue_specs,
)
from controller.auth import Role
from controller.cli.demo import free_port
from controller.store import Store

ROOT = Path(__file__).resolve().parent.parent
CPUS = os.cpu_count() or 1
PHASES = ("bulk submit", "match 1/request", "match 8/request")


@dataclass
class Row:
    backend: str
    workers: int
    phase: str
    count: int
    seconds: float
    requests: int
    empty: int  # 204 answers (nothing for that pilot now)
    client_cpu: float
    controller_cpu: float
    postgres_cpu: float | None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    @property
    def client_share(self) -> float:
        """The load generator's CPU as a share of what the machine had over the phase."""
        return self.client_cpu / (self.seconds * CPUS) if self.seconds > 0 else 0.0

    @property
    def busy(self) -> float:
        """Client, controller and PostgreSQL together, as a share of the machine."""
        used = self.client_cpu + self.controller_cpu + (self.postgres_cpu or 0.0)
        return used / (self.seconds * CPUS) if self.seconds > 0 else 0.0


# the controller -------------------------------------------------------------------------------
def write_config(root: Path, database: Path | str, port: int) -> Path:
    """What bench.server.bench_settings sets, as a TOML file for `controller serve`."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cloudpilot.toml"
    path.write_text(
        f"database = {json.dumps(str(database))}\n"
        f"data_dir = {json.dumps(str(root / 'data'))}\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "loop_interval = 5.0\n"
        f"lease = {QUIET}\n\n"
        "[[endpoints]]\n"
        f"name = {json.dumps(ENDPOINT)}\n"
        'driver = "local"\n'
        "max_machines = 0\n"
        f"cores = {MACHINE_CORES}\n"
        f"memory_mb = {MACHINE_MEMORY}\n"
        f"slots = {MACHINE_SLOTS}\n"
        f"idle_timeout = {QUIET}\n"
        f"lost_after = {QUIET}\n")
    return path


@contextlib.contextmanager
def controller(root: Path, database: Path | str,
               workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m controller serve --workers N` in a process group of its own; yields its URL
    and process. Stopped with SIGTERM, and its group with SIGKILL if it lingers."""
    port = free_port()
    config = write_config(root, database, port)
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPILOT_")}
    log_path = root / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "serve", "--config", str(config),
         "--workers", str(workers)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(url, proc, log_path, 60)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # a worker left behind
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def problems_in_log(path: Path) -> list[str]:
    """What the controller's log tells of errors: each traceback (the message before it and
    the exception), and the 5xx answers by status and path."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    out: list[str] = []
    fives: Counter[str] = Counter()
    for i, ln in enumerate(lines):
        if ln.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j][:1].isspace() or lines[j].startswith("Trace")):
                j += 1
            exc = lines[j] if j < len(lines) else "?"
            out.append(f"traceback after {lines[i - 1][:120] if i else '?'!r}: {exc[:200]}")
        m = re.search(r"cloudpilot\.http (\S+) (\S+) (5\d\d) ", ln)
        if m:
            fives[f"{m[1]} {re.sub(r'/[0-9a-f]{12}/', '/{id}/', m[2])} {m[3]}"] += 1
    out += [f"{n} x {what}" for what, n in fives.most_common()]
    return out


# the database ---------------------------------------------------------------------------------
def db_counts(database: Path | str) -> tuple[dict[str, int], int]:
    """Jobs by state, and the number of task queues."""
    q_states = "SELECT state, COUNT(*) FROM jobs GROUP BY state"
    q_tqs = "SELECT COUNT(*) FROM task_queues"
    if isinstance(database, Path):
        c = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            states = {str(s): int(n) for s, n in c.execute(q_states).fetchall()}
            tqs = int(c.execute(q_tqs).fetchone()[0])
        finally:
            c.close()
        return states, tqs
    import psycopg

    with psycopg.connect(database) as pg:
        states = {str(s): int(n) for s, n in pg.execute(q_states).fetchall()}
        row = pg.execute(q_tqs).fetchone()
        tqs = int(row[0]) if row else 0
    return states, tqs


# one backend, one number of workers ------------------------------------------------------------
@dataclass
class Config:
    backend: str
    workers: int
    database: Path | str
    root: Path
    postgres_pid: int | None


def run_config(cfg: Config, args: argparse.Namespace, specs: list[QueueSpec],
               plan: list[tuple[str, list[int]]]) -> tuple[list[Row], list[str]]:
    """The three phases on one controller; its rows, and notes (checks, fairness, problems)."""
    store = Store(cfg.database)
    try:
        tokens = make_users(store)
        admin_token = store.tokens.issue(Role.ADMIN, note="bench")
    finally:
        store.close()
    procs = args.client_procs
    threads_of = clients.shares(args.threads, procs)  # client threads in each process
    rows: list[Row] = []
    notes: list[str] = []
    label = f"{cfg.backend}, {cfg.workers} worker{'s' if cfg.workers > 1 else ''}"
    with controller(cfg.root, cfg.database, cfg.workers) as (url, proc):
        print(f"[{label}] controller on {url} (pid {proc.pid})", flush=True)

        def phase(name: str, work: list[SubmitWork | MatchWork]) -> Outcome:
            c0 = clients.tree_cpu(proc.pid)
            p0 = clients.tree_cpu(cfg.postgres_pid) if cfg.postgres_pid else None
            got = clients.run(url, work, in_process=False, client_kind=args.connection)
            c1 = clients.tree_cpu(proc.pid)
            p1 = clients.tree_cpu(cfg.postgres_pid) if cfg.postgres_pid else None
            row = Row(cfg.backend, cfg.workers, name, got.count, got.seconds, got.requests,
                      got.empty, got.client_cpu, c1 - c0,
                      None if p0 is None or p1 is None else p1 - p0)
            rows.append(row)
            print(row_line(row), flush=True)
            return got

        # bulk submission: the requests dealt over all client threads
        per_thread = clients.split(bodies(plan, specs, tokens), args.threads)
        work: list[SubmitWork | MatchWork] = []
        at = 0
        for n in threads_of:
            work.append(SubmitWork(per_thread[at:at + n]))
            at += n
        phase(PHASES[0], work)
        states, tqs = db_counts(cfg.database)
        if sum(states.values()) != args.jobs or states.get("waiting") != args.jobs \
                or tqs != args.queues:
            raise RuntimeError(f"[{label}] after submission expected {args.jobs} waiting jobs "
                               f"in {args.queues} task queues, found {states} in {tqs}")
        notes.append(f"[{label}] after submission: {states}, {tqs} task queues (as submitted)")

        # matching: each client thread with pilots of its own, 1 and then 8 jobs a request
        matched: list[int] = []
        for per_request, name in ((1, PHASES[1]), (8, PHASES[2])):
            targets = clients.shares(args.matches, args.threads)
            work, at = [], 0
            for n in threads_of:
                work.append(MatchWork(
                    targets=targets[at:at + n], per_request=per_request,
                    admin_token=admin_token, endpoint=ENDPOINT,
                    machine=(MACHINE_CORES, MACHINE_MEMORY, MACHINE_SLOTS),
                    largest_job=largest_job(specs), tag=f"{per_request}",
                    limit=args.phase_limit, wait=args.wait))
                at += n
            got = phase(name, work)
            if got.errors:
                notes.append(f"[{label}] PROBLEM: {name}: {len(got.errors)} requests failed, "
                             f"e.g. {got.errors[0][:400]}")
            if got.count < args.matches:
                notes.append(f"[{label}] {name}: {got.count:,} of {args.matches:,} matched "
                             f"(stopped after --phase-limit {args.phase_limit:g}s or when its "
                             "pilots were used up)")
            notes.append(f"[{label}] {name}: by owner "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(got.owners.items()))
                         + f"; {got.requests:,} requests, {got.empty:,} answered 204")
            matched += got.ids
        twice = [i for i, k in Counter(matched).items() if k > 1]
        states, _ = db_counts(cfg.database)
        left = args.jobs - states.get("waiting", 0)
        if twice or left != len(matched):
            notes.append(f"[{label}] PROBLEM: {len(matched)} matches answered, {len(twice)} "
                         f"jobs given twice, {left} jobs out of the queue ({states})")
        else:
            notes.append(f"[{label}] after matching: {len(matched):,} jobs out of the queue, "
                         "each given to one pilot once")
    for problem in problems_in_log(cfg.root / "server.log"):
        notes.append(f"[{label}] PROBLEM: in the controller's log: {problem}")
    return rows, notes


# output ---------------------------------------------------------------------------------------
HEAD = (f"{'backend':<9} {'workers':>7}  {'phase':<16} {'count':>8} {'seconds':>8} "
        f"{'rate/s':>8} {'requests':>8} {'204s':>5} {'client CPU s':>12} "
        f"{'controller CPU s':>16} {'postgres CPU s':>14} {'busy':>5}")


def row_line(r: Row) -> str:
    pg = "-" if r.postgres_cpu is None else f"{r.postgres_cpu:.2f}"
    return (f"{r.backend:<9} {r.workers:>7}  {r.phase:<16} {r.count:>8,} {r.seconds:>8.2f} "
            f"{r.rate:>8,.0f} {r.requests:>8,} {r.empty:>5,} {r.client_cpu:>12.2f} "
            f"{r.controller_cpu:>16.2f} {pg:>14} {r.busy:>5.0%}")


def summary(rows: list[Row]) -> str:
    lines = ["| backend | workers | bulk submit jobs/s | match 1/request jobs/s | "
             "match 8/request jobs/s | client CPU share (submit / 1 / 8) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    seen: list[tuple[str, int]] = []
    for r in rows:
        if (r.backend, r.workers) not in seen:
            seen.append((r.backend, r.workers))
    for backend, workers in seen:
        by = {r.phase: r for r in rows if (r.backend, r.workers) == (backend, workers)}
        rate = [f"{by[p].rate:,.0f}" if p in by else "-" for p in PHASES]
        share = " / ".join(f"{by[p].client_share:.0%}" if p in by else "-" for p in PHASES)
        lines.append(f"| {backend} | {workers} | {' | '.join(rate)} | {share} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tests.pgserver import postgres_server, unavailable

    why = unavailable()
    if why:
        print(f"python -m bench: --backend postgres: PostgreSQL is unavailable: {why}",
              file=sys.stderr)
        return 2
    specs = queue_specs(args.queues)
    plan = batches(args.jobs, specs, args.batch)
    print(f"cloudpilot queue benchmark, SQLite and PostgreSQL: {args.jobs:,} jobs in "
          f"{args.queues} task queues of {len(USERS)} users, {len(plan)} bulk requests of <= "
          f"{args.batch:,}; {args.matches:,} matches a phase; load generator: {args.threads} "
          f"HTTP clients (http.client, {args.connection} connections) in "
          f"{args.client_procs} processes; match requests wait {args.wait:g}s; "
          f"controller workers {','.join(map(str, args.workers))}", flush=True)
    print(f"this machine: {CPUS} CPUs (os.cpu_count()); client, controller, PostgreSQL and "
          "this script all share them", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    t_all = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="cloudpilot-bench-", dir="/var/tmp")
            print(f"keeping the databases and logs in {tmp}", flush=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cloudpilot-bench-"))
        pg = stack.enter_context(postgres_server())
        if args.keep:  # PostgreSQL's own log, copied before the server's directory goes
            stack.callback(lambda: shutil.copy(pg.log, Path(tmp) / "postgres.log"))
        got = run_config(Config("sqlite", 1, Path(tmp) / "sqlite" / "cloudpilot.db",
                                Path(tmp) / "sqlite", None), args, specs, plan)
        rows += got[0]
        notes += got[1]
        for n in args.workers:
            got = run_config(Config("postgres", n, pg.create_database(),
                                    Path(tmp) / f"postgres-{n}", pg.pid), args, specs, plan)
            rows += got[0]
            notes += got[1]
    total = time.perf_counter() - t_all
    print()
    print(HEAD)
    print("-" * len(HEAD))
    for r in rows:
        print(row_line(r))
    print()
    print(summary(rows))
    print(f"\n{CPUS} CPUs on this machine. client CPU share: the load generator's CPU seconds "
          f"over (seconds x {CPUS} CPUs) in that phase; busy: client, controller and "
          "PostgreSQL together over the same.")
    for note in notes:
        print(note)
    print(f"total run time {total:.1f}s")
    if args.json:
        print(json.dumps({
            "params": {k: getattr(args, k) for k in ("jobs", "queues", "batch", "matches",
                                                      "threads", "client_procs", "workers")},
            "cpus": CPUS,
            "rows": [{**asdict(r), "rate": round(r.rate, 1)} for r in rows],
            "total_seconds": round(total, 2),
        }, indent=2))
    return 1 if any("PROBLEM" in n for n in notes) else 0
