"""Batch endpoint figures (Slurm, or Grid Engine with --system sge): submission -> job start,
and pilot jobs submitted per second.

    .venv/bin/python -m bench.slurm_latency [--system sge] [--rounds 3] [--pilots 20] [--json]

(as root). A real one-node cluster (tests/slurmcluster.py: munged, slurmctld, slurmd and sshd
on a network-namespace host, 4 CPUs; or tests/sgecluster.py: sge_qmaster, sge_execd and sshd,
4 slots) and a controller in this process (uvicorn in a thread, a
temporary database) with a Slurm endpoint reaching that login node over SSH. Measured:
- no pilot yet: nothing runs on the cluster; the job waits for a pilot job to be submitted,
  scheduled by Slurm, started, and its pilot to register and match (each `--rounds` times);
- pilot idle: a pilot job already runs there, idle (a long-poll, woken by the submission);
- submission rate: `--pilots` pilot jobs submitted by the driver in one SSH session (held in
  the batch system (--hold, -h), then cancelled), and the same number one submit command each;
- one status query (squeue, or qstat -xml and the accounting file, over SSH).
Latency = the job's `started_at` (the controller's clock) - the time just before the submit
request. Everything temporary is removed and every daemon stopped at the end."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.auth import Role
from controller.cli.client import ApiClient
from controller.cli.demo import Server, free_port
from controller.config.settings import EndpointConfig, Settings, endpoint_config
from controller.drivers.batchsite import SYSTEMS, BatchDriver
from controller.harness import wait_until
from controller.store import Store
from tests.sgecluster import SgeCluster
from tests.slurmcluster import SlurmCluster

IDLE_TIMEOUT = 8.0
JOB = {"executable": "/bin/true", "requirements": {"cores": 1, "memory_mb": 64,
                                                    "max_runtime": 60}}


Cluster = SlurmCluster | SgeCluster
# per system: its own settings, the option that holds a pilot job, its words
SYSTEM = {"slurm": ({"partition": "batch"}, {"sbatch_options": ["--hold"]}, "Slurm", "sbatch",
                    "squeue -t all"),
          "sge": ({}, {"qsub_options": ["-h"]}, "Grid Engine", "qsub",
                  "qstat -xml + accounting")}


def driver(cluster: Cluster) -> str:
    return "sge" if isinstance(cluster, SgeCluster) else "slurm"


def endpoint(cluster: Cluster, root: Path, **over: Any) -> EndpointConfig:
    h, hs = cluster.login, cluster.hosts
    root.mkdir(parents=True, exist_ok=True)
    name = driver(cluster)
    return endpoint_config(
        name="hpc", driver=name, cores=1, memory_mb=256, slots=1, max_machines=4,
        max_starts_per_cycle=4, idle_timeout=IDLE_TIMEOUT, heartbeat_interval=1, lost_after=30,
        **{name: {"address": h.address, "port": h.port, "user": hs.user, "key": str(hs.key),
                  "known_hosts": str(hs.known_hosts(root / "known_hosts")),
                  "remote_dir": str(root / "remote"), "python": "/usr/bin/python3",
                  "wall_time": 600, "time_margin": 20, **SYSTEM[name][0], **over}})


def queue_empty(cluster: Cluster) -> bool:
    if isinstance(cluster, SgeCluster):
        return not cluster.jobs()
    return not cluster.jobs("PENDING", "RUNNING", "COMPLETING")


def one(api: ApiClient, ready: Any) -> float:
    wait_until(ready, 90, 0.05, "the endpoint to be ready")
    t0 = time.time()
    job_id = api.submit([JOB])["ids"][0]
    job = wait_until(lambda: (j := api.job(job_id))["started_at"] and j, 90, 0.05,
                     f"job {job_id} to start")
    wait_until(lambda: api.job(job_id)["state"] == "done", 60, 0.05, f"job {job_id} to end")
    return float(job["started_at"] - t0)


def latency(cluster: Cluster, root: Path, rounds: int) -> dict[str, list[float]]:
    port = free_port()
    s = Settings(database=root / "cloudpilot.db", data_dir=root / "data",
                 host=cluster.hosts.controller_host, port=port, loop_interval=0.5,
                 endpoints=[endpoint(cluster, root)])
    store = Store(s.database)
    store.tokens.create_user("bench", "bench")
    api = ApiClient(f"http://{s.host}:{port}", store.tokens.issue(Role.USER, owner="bench"))
    admin = ApiClient(f"http://{s.host}:{port}", store.tokens.issue(Role.ADMIN))
    store.close()

    def live() -> list[dict[str, Any]]:
        return list(admin.request("GET", "/api/v1/machines"))

    def nothing_runs() -> bool:
        return not live() and queue_empty(cluster)

    def pilot_idle() -> bool:
        ms = live()
        return len(ms) == 1 and ms[0]["state"] == "running" and not ms[0]["jobs"]

    cold, idle = [], []
    with Server(s):
        for _ in range(rounds):
            cold.append(one(api, nothing_runs))
            idle.append(one(api, pilot_idle))
    return {"no_pilot": cold, "pilot_idle": idle}


def submission(cluster: Cluster, root: Path, n: int) -> dict[str, float]:
    name = driver(cluster)
    ep = endpoint(cluster, root, **SYSTEM[name][1])
    d = BatchDriver(ep, root / "data-submit", "http://127.0.0.1:9", lambda m: "not-a-token",
                    SYSTEMS[name](ep))
    d.place()
    t0 = time.perf_counter()
    got = d.submit([f"hpc-{i:04d}" for i in range(1, n + 1)])
    batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n + 1, 2 * n + 1):
        got.update(d.submit([f"hpc-{i:04d}"]))
    single = time.perf_counter() - t0
    bad = {m: str(e) for m, e in got.items() if not isinstance(e, str)}
    if bad:
        raise RuntimeError(f"submission failed: {bad}")
    t0 = time.perf_counter()
    jobs = d.refresh().jobs
    status = time.perf_counter() - t0
    d.cancel([str(j) for j in got.values()])
    seen = [i for i in got.values() if i in jobs]
    if len(seen) != 2 * n:
        raise RuntimeError(f"status shows {len(seen)} of the {2 * n} pilot jobs submitted")
    return {"one_session_per_s": n / batch, "one_each_per_s": n / single,
            "status_query_s": status}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.slurm_latency", description=__doc__)
    ap.add_argument("--system", choices=sorted(SYSTEM), default="slurm",
                    help="the batch system (slurm)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each latency (3)")
    ap.add_argument("--pilots", type=int, default=20, help="pilot jobs per submission run")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"cloudpilot-bench-{args.system}-") as tmp:
        root = Path(tmp)
        cluster: Cluster = (SgeCluster(root / "cluster") if args.system == "sge"
                            else SlurmCluster(root / "cluster"))
        try:
            cluster.setup().start()
            lat = latency(cluster, root / "latency", args.rounds)
            cluster.cancel_all()
            sub = submission(cluster, root / "submit", args.pilots)
        finally:
            cluster.close()
    r = {"system": args.system, "rounds": args.rounds, "pilots": args.pilots,
         "no_pilot_median_s": round(statistics.median(lat["no_pilot"]), 2),
         "no_pilot_s": [round(x, 2) for x in lat["no_pilot"]],
         "pilot_idle_median_s": round(statistics.median(lat["pilot_idle"]), 3),
         "pilot_idle_s": [round(x, 3) for x in lat["pilot_idle"]],
         **{k: round(v, 2) for k, v in sub.items()}}
    if args.json:
        print(json.dumps(r))
        return 0
    _, _, label, submit, status = SYSTEM[args.system]
    print(f"{label} endpoint, one node (4 CPUs) behind an SSH login node, submission -> start:")
    print(f"  no pilot yet ({submit}, {label} starts it, pilot registers)  "
          f"{r['no_pilot_median_s']:6.2f} s  (median of {r['no_pilot_s']})")
    print(f"  pilot idle in a running {label} job  "
          f"{r['pilot_idle_median_s']:6.3f} s  (median of {r['pilot_idle_s']})")
    print(f"pilot jobs submitted per second, {args.pilots} in one SSH session: "
          f"{r['one_session_per_s']:.1f}/s; one {submit} per command: "
          f"{r['one_each_per_s']:.1f}/s")
    print(f"one status query ({status} over SSH): {r['status_query_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
