"""`cloudpilot whatif`'s replay over 7 days of 10,000 recorded jobs (issue 25's aim: under
10 s), on a store filled here (a temporary SQLite file): jobs of 6 owners in 3 groups
arriving over 7 days (more by day than by night), 1-8 cores, run times lognormal around 15
min, each with one ended attempt on machines of an endpoint of three on-demand machine types
in two zones. The replay reads them back from the store and simulates the window twice (the
settings in force, and a config with a longer idle timeout and a cap of 10 machines).

    .venv/bin/python -m bench.whatif [--jobs 10000] [--days 7]

Prints the what-if and the seconds it took (reading the store, the two replays, all); the
wall time counts other processes sharing the cores, the CPU time beside it is this one's."""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

from controller.config.settings import Settings
from controller.simulate.whatif import format_whatif, whatif
from controller.store import Store

TYPES = [{"name": n, "cores": c, "memory_mb": c * 2048, "on_demand_price": p,
          "zones": ["eu-west-1a", "eu-west-1b"], "markets": ["on-demand"]}
         for n, c, p in (("c5.large", 2, 0.096), ("c5.xlarge", 4, 0.192),
                         ("c5.2xlarge", 8, 0.384))]
ENDPOINT = {"name": "cloud", "driver": "local", "max_machines": 40, "max_starts_per_cycle": 8,
            "idle_timeout": 120, "machine_types": TYPES}
AIM = 10.0


def fill(store: Store, jobs: int, days: float, seed: int = 25) -> tuple[float, float]:
    """`jobs` done jobs over `days`, ending now; returns (since, until)."""
    rnd = random.Random(seed)
    until = time.time() - 3600
    since = until - days * 86400
    owners = [("alice", "physics"), ("carol", "physics"), ("bob", "biology"),
              ("dan", "biology"), ("eve", "chemistry"), ("fay", "chemistry")]
    jrows, arows, mrows = [], [], []
    t = since
    rate = jobs / (days * 86400)
    for i in range(1, jobs + 1):
        day_part = 1.5 + math.sin((t - since) / 86400 * 2 * math.pi)  # busier by day
        t += rnd.expovariate(rate * day_part / 1.5)
        if t >= until:
            t = until - rnd.uniform(1, 3600)
        owner, grp = rnd.choice(owners)
        cores = rnd.choice([1, 1, 1, 2, 2, 4, 8])
        run = min(rnd.lognormvariate(math.log(900), 1.0), 6 * 3600)
        req = {"cores": cores, "memory_mb": 1024 * cores, "max_runtime": 8 * 3600}
        start = t + rnd.uniform(30, 300)
        machine = f"cloud-{i // 4:05d}"
        jrows.append((i, owner, grp, 1, "done", "/bin/true", json.dumps(req), t, start + run,
                      start, start + run, "cloud", machine))
        arows.append((i, 1, f"p{i // 4}", machine, "cloud", start, start + run + 60,
                      start + run, "done"))
        if i % 4 == 1:
            mrows.append((machine, "cloud", "stopped", start - 120, start + run + 300,
                          json.dumps({"price": 0.192})))
    with store.tx() as c:
        c.executemany("INSERT INTO jobs (id, owner, grp, tq_id, state, executable, requirements,"
                      " created_at, updated_at, started_at, ended_at, endpoint, machine)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", jrows)
        c.executemany("INSERT INTO attempts (job_id, n, pilot_id, machine, endpoint, started_at,"
                      " lease_expires, ended_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      arows)
        c.executemany("INSERT INTO machines (name, endpoint, state, created_at, updated_at,"
                      " info) VALUES (?, ?, ?, ?, ?, ?)", mrows)
    return since, until


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--days", type=float, default=7.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-whatif-") as d:
        store = Store(str(Path(d) / "whatif.db"))
        since, until = fill(store, args.jobs, args.days)
        current = Settings(endpoints=[ENDPOINT], loop_interval=2.0)
        other = Settings(endpoints=[{**ENDPOINT, "idle_timeout": 600, "max_machines": 10}],
                         loop_interval=2.0)
        wall, cpu = time.monotonic(), time.process_time()
        out = whatif(store, current, other, since, until)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        store.close()
    print(format_whatif(out.to_dict()))
    print(f"\nwhatif over {args.days:g} days of {args.jobs:,} recorded jobs: {wall:.2f}s wall "
          f"({cpu:.2f}s CPU; the two replays {out.seconds:.2f}s); aim under {AIM:g}s: "
          + ("met" if wall < AIM else "NOT met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
