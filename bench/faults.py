"""Fault injection against real processes: does every job run once at a time, and does every
submission count once?

    .venv/bin/python -m bench.faults [--only NAME] [--jobs N]

Each scenario starts a real controller (`cloudpilot serve`, 127.0.0.1, a temporary database)
with a local endpoint whose machines are real pilot processes, submits short jobs through the
CLI's client (an Idempotency-Key per submission, retried on its own), injects its fault, and
waits (bounded) for the jobs to end. Every payload writes a ledger line when it starts, every
0.1 s while it runs, and when it ends, so two attempts of one job running at the same moment
show as overlapping intervals.

Per scenario it prints: jobs submitted (acknowledged), done, lost (acknowledged but not done
in the time allowed), jobs whose payload ran twice at once, duplicate completions (a payload
ran to its end more than once) and duplicate submissions (more jobs in the database than
were submitted). The aim is 0 lost, 0 run twice at once and 0 duplicate submissions in every
scenario. Duplicate completions are the price of "at least once": a payload that finished
while its pilot could not report it (frozen, killed) runs again."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import make_controller
from controller.cli.client import ApiClient
from controller.drivers.proctree import MachineProcesses
from controller.harness import Controller
from pilot.config import PilotConfig

ENDPOINT = "local"
# the payloads write one ledger, outside their job directories: no sandbox (where pilots have
# one: isolation = "none")
UNSANDBOXED = {"isolation": "none"} if "isolation" in {
    f.name for f in dataclasses.fields(PilotConfig)} else {}
SETTINGS = {"loop_interval": 0.3, "lease": 6, "lease_margin": 2, "max_retries": 10,
            "long_poll_max": 10}
LOCAL = {"name": ENDPOINT, "driver": "local", "cores": 4, "memory_mb": 4096, "slots": 4,
         "max_machines": 4, "max_starts_per_cycle": 4, "idle_timeout": 5,
         "heartbeat_interval": 0.5, "lost_after": 5, "boot_timeout": 30, **UNSANDBOXED}


def payload(ledger: Path, seconds: float) -> dict[str, object]:
    """A job that writes start, a tick every 0.1 s for `seconds`, then end, to the ledger."""
    ticks = max(1, round(seconds / 0.1))
    script = (f'led() {{ echo "$1 $CLOUDPILOT_JOB_ID $$ $(date +%s.%N)" >> {ledger}; }}; '
              f"led start; i=0; while [ $i -lt {ticks} ]; do led tick; sleep 0.1; "
              f"i=$((i+1)); done; led end")
    return {"executable": "/bin/sh", "arguments": ["-c", script],
            "requirements": {"cores": 1, "memory_mb": 256, "max_runtime": 120}}


@dataclass
class Row:
    scenario: str
    submitted: int = 0
    done: int = 0
    lost: int = 0
    ran_twice_at_once: int = 0
    duplicate_completions: int = 0
    duplicate_submissions: int = 0
    seconds: float = 0.0
    note: str = ""


def read_ledger(ledger: Path) -> tuple[dict[int, dict[int, list[float]]], dict[int, int]]:
    """Per job, per payload PID: [first, last] time seen; and per job, how many ends."""
    spans: dict[int, dict[int, list[float]]] = {}
    ends: dict[int, int] = {}
    if not ledger.exists():
        return spans, ends
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        kind, job, pid, t = parts[0], int(parts[1]), int(parts[2]), float(parts[3])
        span = spans.setdefault(job, {}).setdefault(pid, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
        if kind == "end":
            ends[job] = ends.get(job, 0) + 1
    return spans, ends


def overlapping(spans: dict[int, list[float]]) -> bool:
    """Did two payloads of one job (two PIDs) run at the same moment?"""
    latest_end = float("-inf")
    for start, end in sorted(spans.values()):
        if start < latest_end:
            return True
        latest_end = max(latest_end, end)
    return False


def tally(row: Row, ctl: Controller, ledger: Path, expected: int) -> Row:
    with contextlib.closing(sqlite3.connect(f"file:{ctl.database}?mode=ro", uri=True)) as c:
        states = dict(c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    spans, ends = read_ledger(ledger)
    row.done = states.get("done", 0)
    row.lost = row.submitted - row.done
    row.ran_twice_at_once = sum(1 for s in spans.values() if overlapping(s))
    row.duplicate_completions = sum(1 for n in ends.values() if n > 1)
    row.duplicate_submissions = max(0, sum(states.values()) - expected)
    return row


def wait_done(ctl: Controller, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception), contextlib.closing(
                sqlite3.connect(f"file:{ctl.database}?mode=ro", uri=True, timeout=5)) as c:
            ended = c.execute("SELECT COUNT(*) FROM jobs WHERE state IN"
                              " ('done', 'failed', 'killed')").fetchone()[0]
            if ended >= n:
                return
        time.sleep(0.5)


def cleanup(ctl: Controller) -> None:
    """Stop the controller, then every process of every machine it started."""
    ctl.stop()
    for d in ctl.root.glob(f"data*/**/{ENDPOINT}/*"):  # the local endpoint's machine dirs
        if d.is_dir():
            MachineProcesses(d.parent, d.name).kill()


# scenarios ----------------------------------------------------------------------------------
def controller_sigkill(tmp: Path, n_jobs: int, every: float = 3.0) -> Row:
    """The controller is SIGKILLed 5 times, `every` seconds (and restarted a second later)
    while short jobs run; submissions go on meanwhile, retried by the client under their
    keys."""
    ctl, ledger = make_controller(tmp, SETTINGS, [LOCAL]), tmp / "ledger"
    ctl.start()
    row, t0 = Row("controller SIGKILL x5 during the run"), time.monotonic()
    acked: list[int] = []

    def submit() -> None:
        api = ApiClient(ctl.url, ctl.tokens["alice"], retry_for=60)
        for k in range(0, n_jobs, 20):
            acked.extend(api.submit([payload(ledger, 0.5)] * min(20, n_jobs - k))["ids"])
            time.sleep(0.1)

    try:
        sub = threading.Thread(target=submit)
        sub.start()
        for _ in range(5):
            time.sleep(every)
            ctl.stop(signal.SIGKILL)
            time.sleep(1.0)
            ctl.start()
        sub.join(120)
        row.submitted = len(set(acked))
        wait_done(ctl, n_jobs, 120)
        return tally(row, ctl, ledger, n_jobs)
    finally:
        row.seconds = time.monotonic() - t0
        cleanup(ctl)


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the controller. Armed, it forwards the next
    request but, when the controller's answer starts to come back (so the controller has
    committed), it SIGKILLs the controller and drops the client's connection unanswered."""

    def __init__(self, upstream_port: int, on_answer: Callable[[], None]) -> None:
        self.upstream_port, self.on_answer = upstream_port, on_answer
        self.armed = False
        self.dropped = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, answer: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    if answer and self.armed:
                        self.armed = False
                        self.dropped += 1
                        self.on_answer()  # the controller dies with its answer unsent
                        break
                    w.write(data)
                    await w.drain()
            w.close()

        up = asyncio.ensure_future(pipe(cr, uw, False))
        await pipe(ur, cw, True)
        up.cancel()
        uw.close()


def killed_between_commit_and_answer(tmp: Path, n_jobs: int) -> Row:
    """A bulk submission reaches the controller and is committed; the controller is killed
    before its answer leaves; the client sees a dropped connection and retries (same key)
    until the restarted controller answers."""
    ctl, ledger = make_controller(tmp, SETTINGS, [LOCAL]), tmp / "ledger"
    ctl.start()
    row, t0 = Row("controller killed between commit and answer"), time.monotonic()

    def kill() -> None:
        assert ctl.proc is not None
        ctl.proc.kill()
        threading.Timer(1.0, ctl.start).start()

    proxy = DroppingProxy(ctl.port, kill)
    try:
        api = ApiClient(f"http://127.0.0.1:{proxy.port}", ctl.tokens["alice"], retry_for=60)
        proxy.armed = True
        ids = api.submit([payload(ledger, 0.2)] * n_jobs)["ids"]
        row.submitted = len(set(ids))
        row.note = f"answers dropped: {proxy.dropped}"
        wait_done(ctl, n_jobs, 120)
        return tally(row, ctl, ledger, n_jobs)
    finally:
        row.seconds = time.monotonic() - t0
        proxy.close()
        time.sleep(1.5)  # the restart timer
        cleanup(ctl)


MANUAL = {"name": "manual", "driver": "local", "cores": 4, "memory_mb": 4096, "slots": 4,
          "max_machines": 0, "heartbeat_interval": 0.5, "lost_after": 60, "idle_timeout": 60}


def pilots_faulted(tmp: Path, n_jobs: int, fault: str) -> Row:
    """Three pilots (4 slots each) run short jobs; three times, one of them is SIGKILLed,
    SIGSTOPped (and resumed once its lease has surely run out) or SIGTERMed mid-job, and a new
    pilot takes its place."""
    ctl, ledger = make_controller(tmp, SETTINGS, [MANUAL]), tmp / "ledger"
    ctl.start()
    row, t0 = Row(f"pilot {fault} mid-job x3"), time.monotonic()
    n = 0

    def new_pilot() -> None:
        nonlocal n
        n += 1
        ctl.start_pilot(f"m{n}", slots=4, cores=4, **UNSANDBOXED)

    try:
        for _ in range(3):
            new_pilot()
        api = ApiClient(ctl.url, ctl.tokens["alice"], retry_for=60)
        row.submitted = len(set(api.submit([payload(ledger, 1.0)] * n_jobs)["ids"]))
        lease = float(SETTINGS["lease"]) + float(SETTINGS["lease_margin"])
        for k in range(3):
            time.sleep(2.0)
            victim = ctl.pilots[k]  # the oldest pilots, each holding jobs by now
            if fault == "SIGSTOP":
                victim.send_signal(signal.SIGSTOP)
                new_pilot()
                threading.Timer(lease + 2, victim.send_signal, (signal.SIGCONT,)).start()
            else:
                victim.send_signal(signal.SIGKILL if fault == "SIGKILL" else signal.SIGTERM)
                new_pilot()
        wait_done(ctl, n_jobs, 150)
        return tally(row, ctl, ledger, n_jobs)
    finally:
        row.seconds = time.monotonic() - t0
        for p in ctl.pilots:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGKILL)
        ctl.stop()


def controller_frozen(tmp: Path, n_jobs: int) -> Row:
    """The controller is frozen (SIGSTOP) longer than a lease while pilots run jobs: the
    pilots cannot renew, so their shepherds end the payloads when the leases run out; the
    resumed controller gives the jobs out again."""
    ctl, ledger = make_controller(tmp, SETTINGS, [MANUAL]), tmp / "ledger"
    ctl.start()
    row, t0 = Row("controller frozen longer than a lease"), time.monotonic()
    try:
        for n in range(3):
            ctl.start_pilot(f"m{n}", slots=4, cores=4, **UNSANDBOXED)
        api = ApiClient(ctl.url, ctl.tokens["alice"], retry_for=60)
        row.submitted = len(set(api.submit([payload(ledger, 3.0)] * n_jobs)["ids"]))
        time.sleep(3.0)
        assert ctl.proc is not None
        ctl.proc.send_signal(signal.SIGSTOP)
        time.sleep(float(SETTINGS["lease"]) + 3)
        ctl.proc.send_signal(signal.SIGCONT)
        wait_done(ctl, n_jobs, 150)
        return tally(row, ctl, ledger, n_jobs)
    finally:
        row.seconds = time.monotonic() - t0
        if ctl.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                ctl.proc.send_signal(signal.SIGCONT)
        for p in ctl.pilots:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        ctl.stop()


SCENARIOS: dict[str, Callable[[Path, int], Row]] = {
    "controller-sigkill": controller_sigkill,
    "commit-then-kill": killed_between_commit_and_answer,
    "pilot-sigkill": lambda tmp, n: pilots_faulted(tmp, n, "SIGKILL"),
    "pilot-sigstop": lambda tmp, n: pilots_faulted(tmp, n, "SIGSTOP"),
    "pilot-sigterm": lambda tmp, n: pilots_faulted(tmp, n, "SIGTERM"),
    "controller-sigstop": controller_frozen,
}


def table(rows: list[Row]) -> str:
    head = ["scenario", "submitted", "done", "lost", "ran twice at once",
            "dup. completions", "dup. submissions", "time"]
    cells = [head] + [[r.scenario, str(r.submitted), str(r.done), str(r.lost),
                       str(r.ran_twice_at_once), str(r.duplicate_completions),
                       str(r.duplicate_submissions), f"{r.seconds:.0f}s"] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i])
                       for i in range(len(head))) for c in cells]
    notes = [f"  {r.scenario}: {r.note}" for r in rows if r.note]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], *notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    ap.add_argument("--jobs", type=int, default=300, help="jobs per scenario (300)")
    args = ap.parse_args(argv)
    rows = []
    for name in args.only or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix=f"cloudpilot-faults-{name}-") as tmp:
            rows.append(SCENARIOS[name](Path(tmp), args.jobs))
        print(table(rows[-1:]).splitlines()[2], flush=True)
    print()
    print(table(rows))
    bad = any(r.lost or r.ran_twice_at_once or r.duplicate_submissions for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
