"""SSH endpoint latency: from a job's submission to its start on an SSH host.

    .venv/bin/python -m bench.ssh_latency [--rounds 3] [--json]      (as root: it makes a
                                                                      network namespace)

One test host (tests/sshhosts.py: Debian sshd in a network namespace, or on 127.0.0.2 where
namespaces are not permitted), a controller in this process (uvicorn in a thread, a temporary
database) with an SSH endpoint of that host. Measured, each `--rounds` times:
- first contact: no pilot and none of its files on the host (copy + start, once);
- no pilot running: the pilot was deployed there before and stopped when idle (the usual case:
  an idle host whose pilot the controller stopped);
- pilot idle: a pilot already waits there (a long-poll, woken by the submission).
Latency = the job's `started_at` (the controller's clock) - the time just before the submit
request. Everything temporary is removed at the end."""

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
from controller.config.settings import Settings, SshConfig, SshHostConfig, endpoint_config
from controller.harness import wait_until
from controller.store import Store
from tests.sshhosts import SshHosts

IDLE_TIMEOUT = 3.0
JOB = {"executable": "/bin/true", "requirements": {"cores": 1, "memory_mb": 64,
                                                    "max_runtime": 60}}


def settings(root: Path, hosts: SshHosts, port: int) -> Settings:
    h = hosts.hosts[0]
    return Settings(
        database=root / "cloudpilot.db", data_dir=root / "data", host=hosts.controller_host,
        port=port, loop_interval=0.5,
        endpoints=[endpoint_config(
            name="lab", driver="ssh", cores=2, memory_mb=2048, slots=2, idle_timeout=IDLE_TIMEOUT,
            heartbeat_interval=1, lost_after=30, max_starts_per_cycle=1,
            ssh=SshConfig(user=hosts.user, key=hosts.key, remote_dir=str(root / "remote"),
                          known_hosts=hosts.known_hosts(root / "known_hosts"), stop_grace=5,
                          hosts=[SshHostConfig(name=h.name, address=h.address, port=h.port)]))],
    )


def one(api: ApiClient, ready: Any) -> float:
    wait_until(ready, 60, 0.05, "the host to be ready")
    t0 = time.time()
    job_id = api.submit([JOB])["ids"][0]
    job = wait_until(lambda: (j := api.job(job_id))["started_at"] and j, 60, 0.05,
                     f"job {job_id} to start")
    wait_until(lambda: api.job(job_id)["state"] == "done", 60, 0.05, f"job {job_id} to end")
    return float(job["started_at"] - t0)


def run(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cloudpilot-bench-ssh-") as tmp:
        root = Path(tmp)
        hosts = SshHosts(root / "hosts", 1)
        try:
            hosts.setup()
            hosts.start()
            s = settings(root, hosts, free_port())
            store = Store(s.database)
            store.tokens.create_user("bench", "bench")
            token = store.tokens.issue(Role.USER, owner="bench")
            admin = ApiClient(f"http://{s.host}:{s.port}", store.tokens.issue(Role.ADMIN))
            store.close()
            api = ApiClient(f"http://{s.host}:{s.port}", token)
            with Server(s):
                def state() -> str:
                    return str(admin.hosts("lab")[0]["machine_state"])

                def pilot_idle() -> bool:
                    return state() == "running" and not admin.hosts("lab")[0]["jobs"]

                def stopped() -> bool:
                    """Stopped, and the stop's Ansible run over (the pilot says goodbye first,
                    the run ends a moment later)."""
                    last = admin.request("GET", "/api/v1/machines/lab-h1/events")[-1]
                    return state() == "stopped" and str(last["reason"]).startswith("stop-pilot")

                first = one(api, lambda: state() == "stopped")
                cold, idle = [], []
                for _ in range(rounds):
                    idle.append(one(api, pilot_idle))
                    cold.append(one(api, stopped))
        finally:
            hosts.close()
    return {"host": "netns" if hosts.netns else "127.0.0.x", "rounds": rounds,
            "first_contact_s": round(first, 2),
            "no_pilot_median_s": round(statistics.median(cold), 2),
            "no_pilot_s": [round(x, 2) for x in cold],
            "pilot_idle_median_s": round(statistics.median(idle), 3),
            "pilot_idle_s": [round(x, 3) for x in idle]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ssh_latency", description=__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each kind (3)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    r = run(args.rounds)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"SSH endpoint, one host ({r['host']}), submission -> job started:")
    print(f"  first contact (copy the pilot, start it)   {r['first_contact_s']:6.2f} s")
    print(f"  no pilot running (deployed before)         {r['no_pilot_median_s']:6.2f} s"
          f"  (median of {r['no_pilot_s']})")
    print(f"  pilot idle on the host                     {r['pilot_idle_median_s']:6.3f} s"
          f"  (median of {r['pilot_idle_s']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
