"""Dashboard pages and the /metrics scrape with 100,000 jobs in the database.

    .venv/bin/python -m bench.dashboard [--jobs 100000] [--done 20000] [--rounds 10]

Fills a fresh SQLite database at the store (jobs in 50 task queues of 3 users; `--done` of
them matched to a pilot and reported done, one in ten of those failed instead), starts the
controller in its own process (uvicorn on 127.0.0.1, a random port), logs in to the dashboard
with an admin token, and times each page (and the live part htmx reloads) over `--rounds`
requests: median and worst. Then /metrics: the first scrape after the start (which reads every
job event once) and the next ones (which read only new events). Aim: every page < 200 ms."""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.__main__ import controller, make_users, new_job, queue_specs
from bench.server import ENDPOINT
from controller.auth import Role
from controller.domain.matching import SlotOffer
from controller.store import Store

AIM_MS = 200.0


def fill(db: Path, n_jobs: int, n_done: int) -> str:
    """The database: n_jobs submitted, n_done of them run; returns an admin token."""
    store = Store(db)
    make_users(store)
    specs = queue_specs(50)
    t0 = time.perf_counter()
    for start in range(0, n_jobs, 5000):
        by_owner: dict[str, list[int]] = {}
        for k in range(start, min(start + 5000, n_jobs)):
            by_owner.setdefault(specs[k % len(specs)].owner, []).append(k)
        for owner, ks in by_owner.items():
            group = "biology" if owner == "bob" else "physics"
            store.jobs.submit([new_job(k, specs[k % len(specs)]) for k in ks], owner, group, 2)
    pilot, machine = "benchpilot01", "bench-0001"
    store.machines.register_pilot(pilot, ENDPOINT, machine, 64, 262144, [], 64, "bench")
    offer = SlotOffer(endpoint=ENDPOINT, cores=64, memory_mb=262144)
    shares = store.tokens.shares()

    done = 0
    while done < n_done:
        got = store.jobs.match(pilot, machine, offer, by="owner", shares=shares,
                               token_margin=3600, count=min(32, n_done - done)).jobs
        if not got:
            break
        store.jobs.heartbeat(pilot, {j.id: None for j, _ in got})
        for j, _ in got:
            failed = j.id % 10 == 0
            store.jobs.report(pilot, j.id, "failed" if failed else "done", 1 if failed else 0,
                              "exit 1" if failed else None)
        done += len(got)
    admin = store.tokens.issue(Role.ADMIN, note="bench")
    store.close()
    print(f"filled {n_jobs} jobs ({done} run) in {time.perf_counter() - t0:.1f}s")
    return admin


def login(http: httpx.Client, token: str) -> None:
    page = http.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    r = http.post("/login", data={"csrf": csrf.group(1), "token": token, "next": "/"})
    assert r.status_code == 303, r.text


def timed(http: httpx.Client, path: str, rounds: int,
          headers: dict[str, str] | None = None) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = http.get(path, headers=headers or {})
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"
    return statistics.median(times), max(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--done", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cloudpilot-bench-dash-") as tmp:
        root = Path(tmp)
        admin = fill(root / "cloudpilot.db", args.jobs, args.done)
        with sqlite3.connect(root / "cloudpilot.db") as c:
            events = c.execute("SELECT COUNT(*) FROM job_events").fetchone()[0]
            deep = c.execute("SELECT id FROM jobs ORDER BY id LIMIT 1 OFFSET ?",
                             (args.jobs // 2,)).fetchone()[0]
            some = c.execute("SELECT id FROM jobs WHERE state = 'done' LIMIT 1").fetchone()[0]
        with controller(root, in_thread=False) as url, httpx.Client(base_url=url,
                                                                   timeout=60) as http:
            metrics = {"Authorization": f"Bearer {admin}"}
            t0 = time.perf_counter()
            r = http.get("/metrics", headers=metrics)
            first = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200
            login(http, admin)
            pages = [
                ("overview /", "/"),
                ("jobs, first page (newest)", "/jobs"),
                ("jobs, a page halfway down (keyset)", f"/jobs?after={deep}"),
                ("jobs, oldest first, halfway", f"/jobs?sort=old&after={deep}"),
                ("jobs, state=waiting", "/jobs?state=waiting"),
                ("jobs, state=done, by last change", "/jobs?state=done&sort=changed"),
                ("jobs, by last change, halfway", f"/jobs?sort=changed&after=0:{deep}"),
                ("jobs, owner=bob, state=failed", "/jobs?owner=bob&state=failed"),
                ("jobs, endpoint=bench", f"/jobs?endpoint={ENDPOINT}"),
                ("jobs, task queue 7", "/jobs?tq=7"),
                ("jobs, 500 a page", "/jobs?size=500"),
                ("one job", f"/jobs/{some}"),
                ("endpoints", "/endpoints"),
                ("machines (all)", "/machines?all=1"),
                ("plans", "/plans"),
                ("scheduler", "/scheduler"),
            ]
            rows = []
            for what, path in pages:
                rows.append((what, *timed(http, path, args.rounds)))
            rows.append(("jobs, live part (htmx reload)",
                         *timed(http, "/jobs", args.rounds, {"HX-Request": "true"})))
            scrape = timed(http, "/metrics", args.rounds, metrics)
            size = len(http.get("/metrics", headers=metrics).content)
        print(f"\n{args.jobs:,} jobs, {events:,} job events; {args.rounds} requests each\n")
        print(f"| {'page':<40} | median ms | worst ms | < {AIM_MS:.0f} ms |")
        print(f"| {'-' * 40} | --- | --- | --- |")
        for what, med, worst in rows:
            print(f"| {what:<40} | {med:9.1f} | {worst:8.1f} | "
                  f"{'met' if worst < AIM_MS else 'MISSED'} |")
        print(f"\n/metrics: first scrape after start {first:.0f} ms (reads all {events:,} job "
              f"events once); then median {scrape[0]:.1f} ms, worst {scrape[1]:.1f} ms "
              f"({size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
