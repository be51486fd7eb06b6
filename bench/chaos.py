"""Chaos against a cluster on PostgreSQL: do the promises hold when its parts fail at random?

    .venv/bin/python -m bench.chaos [--seed N] [--runs K] [--duration S] [--workers W]
                                    [--keep DIR]

Each run starts a real PostgreSQL server (tests/pgserver.py, its own directory and port), a
controller with W worker processes on it (`cloudpilot serve --workers W`, 127.0.0.1) and a
local endpoint whose machines are real pilot processes, submits short jobs that write a ledger
(as `bench.faults` does) for `duration` seconds, five at a time while fewer than IN_FLIGHT (40)
are unfinished (the cluster's pace on any machine, not a backlog it cannot clear), while a
scheduler of faults, seeded so that a failing run can be replayed with the same seed, every 2-5
s does one of: SIGKILL a worker (the supervisor starts another), freeze a worker (SIGSTOP for
1-6 s: past the 3 s leader lease the leader is deposed and its late results are fenced off),
SIGKILL a machine's pilot, freeze a pilot (SIGSTOP for 1-8 s), or restart PostgreSQL. Then the
faults stop, the jobs are waited for (bounded), and the invariants are counted and printed:

- lost: acknowledged jobs that ended without being done (failed, killed) or are gone;
- unfinished: acknowledged jobs still waiting or running when the bench stopped waiting;
- ran twice at once: two payloads of one job alive at the same moment (ledger);
- dup. submissions: more jobs in the database than were acknowledged;
- machines started twice: a machine name created (requested) more than once;
- machines leaked: a pilot process still running on a machine the database calls stopped,
  lost or failed, once the run is over;
- leases outlived: a payload still writing its ledger more than `lease +
  lease_margin` after its attempt was ended by the controller.

The exit status is 1 when any of them is not zero."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.faults import LOCAL, Row, overlapping, payload, read_ledger
from bench.harness import make_controller
from controller.cli.client import ApiClient
from controller.drivers.proctree import MachineProcesses
from controller.harness import Controller
from tests.pgserver import PostgresServer

IN_FLIGHT = 40  # jobs submitted and not yet ended, at most: the cluster's pace, not a backlog
SETTINGS = {"loop_interval": 0.5, "lease": 6, "lease_margin": 2, "max_retries": 20,
            "long_poll_max": 10, "leader_lease": 3}


@dataclass
class Run(Row):
    """bench.faults' row, and what only a cluster can get wrong."""

    seed: int = 0
    unfinished: int = 0  # acknowledged, still waiting or running when the bench stopped waiting
    machines_started_twice: int = 0
    machines_leaked: int = 0
    leases_outlived: int = 0
    faults: list[str] = field(default_factory=list)
    why_not_done: list[str] = field(default_factory=list)  # the first few, with their reasons

    def bad(self) -> bool:
        return any((self.lost, self.unfinished, self.ran_twice_at_once, self.duplicate_submissions,
                    self.machines_started_twice, self.machines_leaked, self.leases_outlived))


def workers(ctl: Controller) -> list[int]:
    assert ctl.proc is not None
    try:
        text = Path(f"/proc/{ctl.proc.pid}/task/{ctl.proc.pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def pid_files(ctl: Controller) -> list[Path]:
    """The local machines' pid files (data-machines/ENDPOINT/MACHINE/pilot.pid): not a
    recursive glob, which walks the job directories pilots remove meanwhile."""
    with contextlib.suppress(OSError):
        return list((ctl.root / "data-machines").glob("*/*/pilot.pid"))
    return []


def pilots(ctl: Controller) -> dict[str, int]:
    """Live machines' pilot processes: machine name -> PID."""
    out = {}
    for f in pid_files(ctl):
        with contextlib.suppress(ValueError, OSError):
            pid = int(f.read_text())
            os.kill(pid, 0)
            out[f.parent.name] = pid
    return out


def freeze(pid: int, seconds: float) -> None:
    """SIGSTOP now, SIGCONT after `seconds` (in a thread)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)

    def thaw() -> None:
        time.sleep(seconds)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    threading.Thread(target=thaw, daemon=True).start()


def fault(rng: random.Random, ctl: Controller, pg: PostgresServer) -> str:
    kind = rng.choice(["kill worker", "freeze worker", "kill pilot", "freeze pilot",
                       "restart postgres"])
    ws, ps = workers(ctl), pilots(ctl)
    if kind in ("kill worker", "freeze worker") and ws:
        pid = rng.choice(sorted(ws))
        if kind == "kill worker":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return kind
        secs = rng.uniform(1, 6)
        freeze(pid, secs)
        return f"{kind} {secs:.0f}s"
    if kind in ("kill pilot", "freeze pilot") and ps:
        name = rng.choice(sorted(ps))
        if kind == "kill pilot":
            with contextlib.suppress(ProcessLookupError):
                os.kill(ps[name], signal.SIGKILL)
            return kind
        secs = rng.uniform(1, 8)
        freeze(ps[name], secs)
        return f"{kind} {secs:.0f}s"
    if kind == "restart postgres":
        pg.restart()
        return kind
    return "nothing (no such process now)"


def rows(url: str, sql: str) -> list[Any]:
    with psycopg.connect(url, connect_timeout=5) as c:
        return list(c.execute(sql).fetchall())


FINAL = ("done", "failed", "killed")


def unfinished(url: str) -> int:
    return int(rows(url, "SELECT COUNT(*) FROM jobs WHERE state NOT IN"
                    " ('done', 'failed', 'killed')")[0][0])


def ended_machines(url: str) -> set[str]:
    return {r[0] for r in rows(url, "SELECT name FROM machines WHERE state IN"
                               " ('stopped', 'lost', 'failed')")}


def tally(run: Run, ctl: Controller, url: str, ledger: Path, acked: int) -> Run:
    states = dict(rows(url, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    run.done = states.get("done", 0)
    run.unfinished = sum(n for st, n in states.items() if st not in FINAL)
    run.lost = run.submitted - run.done - run.unfinished  # ended not done, or gone
    run.why_not_done = [f"job {j} {st}: {why}" for j, st, why in rows(
        url, "SELECT id, state, reason FROM jobs WHERE state != 'done' ORDER BY id LIMIT 3")]
    spans, _ = read_ledger(ledger)
    run.ran_twice_at_once = sum(1 for s in spans.values() if overlapping(s))
    run.duplicate_submissions = max(0, sum(states.values()) - acked)
    run.machines_started_twice = len(rows(
        url, "SELECT machine FROM machine_events WHERE from_state IS NULL"
        " GROUP BY machine HAVING COUNT(*) > 1"))
    # a pilot on a machine the database calls over, still running once a stop has had its
    # time (the driver's stop_grace, 10 s): at the instant of the count, a pilot that said
    # goodbye (its machine stopped) may still be on its way out (seed 3, the first count)
    leaked = ended_machines(url) & set(pilots(ctl))
    if leaked:
        time.sleep(12)
        leaked &= ended_machines(url) & set(pilots(ctl))
    run.machines_leaked = len(leaked)
    # a payload's last ledger line after its attempt ended (+ lease and margin)
    ended = rows(url, "SELECT job_id, ended_at FROM attempts WHERE ended_at IS NOT NULL"
                 " AND outcome != 'done'")
    grace = float(SETTINGS["lease"]) + float(SETTINGS["lease_margin"]) + 1
    last = {job: max(s[1] for s in by_pid.values()) for job, by_pid in spans.items()}
    run.leases_outlived = sum(1 for job, at in ended
                              if job in last and last[job] > at + grace
                              and not any(s[0] > at for s in spans[job].values()))
    return run


def one_run(tmp: Path, seed: int, duration: float, n_workers: int) -> Run:
    rng, run, t0 = random.Random(seed), Run(f"seed {seed}", seed=seed), time.monotonic()
    pg = PostgresServer().start()
    ctl: Controller | None = None
    try:
        url = pg.create_database()
        ctl = make_controller(tmp / "ctl", {**SETTINGS, "workers": n_workers, "database": url},
                              [LOCAL])
        ctl.start()
        ledger, acked = tmp / "ledger", []
        stop = threading.Event()

        def submit() -> None:
            api = ApiClient(ctl.url, ctl.tokens["alice"], retry_for=60)
            lengths = random.Random(-seed)  # its own: the faults' order replays
            while not stop.is_set():
                with contextlib.suppress(Exception):  # a key retried past a minute: not acked;
                    if unfinished(url) <= IN_FLIGHT - 5:  # the database away: not now
                        acked.extend(api.submit(
                            [payload(ledger, lengths.uniform(0.3, 2.0))] * 5)["ids"])
                stop.wait(0.5)

        sub = threading.Thread(target=submit)
        sub.start()
        try:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                time.sleep(rng.uniform(2, 5))
                run.faults.append(fault(rng, ctl, pg))
        finally:  # the submitting thread ends, also when the bench itself fails
            stop.set()
            sub.join(90)
        run.submitted = len(set(acked))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error):
                if unfinished(url) == 0:
                    break
            time.sleep(1)
        time.sleep(float(SETTINGS["lease"]))  # idle machines stop, leases run out
        return tally(run, ctl, url, ledger, len(acked))
    finally:
        run.seconds = time.monotonic() - t0
        if ctl is not None:
            for pid in workers(ctl):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            ctl.stop()
            for d in pid_files(ctl):
                MachineProcesses(d.parent.parent, d.parent.name).kill()
        pg.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="the first run's seed (1)")
    ap.add_argument("--runs", type=int, default=1, help="runs, seeds seed, seed+1, ... (1)")
    ap.add_argument("--duration", type=float, default=300.0, help="faults for this long (s)")
    ap.add_argument("--workers", type=int, default=3, choices=(2, 3, 4))
    ap.add_argument("--keep", type=Path, help="keep each run's files (the controller's and "
                    "the pilots' logs, the ledger) in DIR/seed-N")
    args = ap.parse_args(argv)
    head = ("seed  submitted  done  lost  unfinished  twice at once  dup. subm.  started twice"
            "  leaked  leases outlived  time")
    print(head)
    print("-" * len(head))
    bad = False
    for seed in range(args.seed, args.seed + args.runs):
        with contextlib.ExitStack() as stack:
            if args.keep is not None:
                tmp = args.keep / f"seed-{seed}"
                tmp.mkdir(parents=True)
            else:
                tmp = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"cloudpilot-chaos-{seed}-")))
            r = one_run(tmp, seed, args.duration, args.workers)
        bad |= r.bad()
        print(f"{r.seed:>4}  {r.submitted:>9}  {r.done:>4}  {r.lost:>4}  {r.unfinished:>10}  "
              f"{r.ran_twice_at_once:>13}  {r.duplicate_submissions:>10}  "
              f"{r.machines_started_twice:>13}  {r.machines_leaked:>6}  "
              f"{r.leases_outlived:>15}  {r.seconds:>3.0f}s", flush=True)
        print("      faults: " + ", ".join(r.faults), flush=True)
        for why in r.why_not_done:
            print("      not done: " + why, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
