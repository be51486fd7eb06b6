"""`cloudpilot job ID --follow` and `cloudpilot watch`: following the controller live.

Tables and the live view are drawn by rich; with --plain, or when the output is not a
terminal, plain lines are printed instead (one per change), for pipes and scripts."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from controller.cli import sse
from controller.cli.client import ApiClient, ApiError

FINAL = ("done", "failed", "killed")
JOB_STATES = ("waiting", "matched", "running", "done", "failed", "killed")


def _when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def follow_job(c: ApiClient, job_id: int, out: IO[str] | None = None) -> int:
    """Print the job's events as they are recorded, then its output once it has ended.
    Returns 0 if it ended done, 1 otherwise."""
    out = out or sys.stdout
    j = c.job(job_id)  # 404 if the caller may not see it
    print(f"job {job_id} {j['name'] or ''} ({j['owner']}): {j['executable']} "
          f"{' '.join(j['arguments'])}".rstrip(), file=out, flush=True)
    state = j["state"]
    lock = threading.Lock()
    live = threading.Thread(target=_print_live, args=(c, job_id, out, lock), daemon=True)
    live.start()
    for ev in sse.follow(c.http, {"job": job_id, "since": "start"}):
        d = ev.json()
        where = f" [{d['machine']}]" if d.get("machine") and d["to_state"] == "matched" else ""
        with lock:
            print(f"{_when(d['at'])}  {d['from_state'] or '-':>11} -> {d['to_state']:<11} "
                  f"{d['reason'] or ''}{where}", file=out, flush=True)
        state = d["to_state"]
        if state in FINAL:
            break
    live.join(15)  # the last live pieces arrive before the report
    output = None
    for _ in range(10):  # the pilot uploads the output just before its report
        try:
            output = c.output(job_id)
            break
        except ApiError as e:
            if e.status != 404:
                raise
            time.sleep(0.2)
    if output is None:
        print("output: none", file=out)
    else:
        print("stdout:" + (" (tail)" if output["truncated"] else ""), file=out)
        print(output["stdout"].rstrip() or "  (empty)", file=out)
        if output["stderr"]:
            print("stderr:", file=out)
            print(output["stderr"].rstrip(), file=out)
    return 0 if state == "done" else 1


def _print_live(c: ApiClient, job_id: int, out: IO[str], lock: threading.Lock) -> None:
    """Print a running job's output as it comes (stderr lines marked), until it has ended."""
    try:
        for piece in c.follow_output(job_id):
            text = piece["text"]
            if piece["stream"] == "stderr":
                text = "".join(f"! {line}" for line in text.splitlines(keepends=True))
            with lock:
                out.write(text)
                out.flush()
    except ApiError:
        pass  # the final output is printed after the job ends anyway


def plain_line(o: dict[str, Any]) -> str:
    """The overview on one line (watch's plain mode)."""
    jobs = " ".join(f"{s} {o['jobs'].get(s, 0)}" for s in JOB_STATES)
    machines = "; ".join(
        f"{ep} " + " ".join(f"{n} {st}" for st, n in sorted(by.items()))
        for ep, by in sorted(o["machines"].items())) or "none"
    rate, today = sum(o["spend_rate"].values()), sum(o["spent_today"].values())
    return f"{_when(time.time())} jobs: {jobs} | machines: {machines} | " \
           f"spend ${rate:.2f}/h, ${today:.2f} today"


def tables(o: dict[str, Any]) -> Group:
    jobs = Table(title="jobs by state", expand=False)
    for s in JOB_STATES:
        jobs.add_column(s, justify="right")
    jobs.add_row(*(str(o["jobs"].get(s, 0)) for s in JOB_STATES))
    states = ("requested", "booting", "running", "stopping", "stopped", "lost", "failed")
    fleet = Table(title="machines by endpoint")
    fleet.add_column("endpoint")
    for s in states:
        fleet.add_column(s, justify="right")
    fleet.add_column("$/h now", justify="right")
    fleet.add_column("$ today", justify="right")
    for ep in sorted(set(o["machines"]) | set(o["spend_rate"])):
        by = o["machines"].get(ep, {})
        fleet.add_row(ep, *(str(by.get(s, 0)) for s in states),
                      f"{o['spend_rate'].get(ep, 0.0):.2f}",
                      f"{o['spent_today'].get(ep, 0.0):.2f}")
    total = f"spend: ${sum(o['spend_rate'].values()):.2f}/h now, " \
            f"${sum(o['spent_today'].values()):.2f} today, ${sum(o['spent_total'].values()):.2f}" \
            f" in all · {_when(time.time())}"
    return Group(jobs, fleet, total)


def watch(c: ApiClient, *, plain: bool | None = None, once: bool = False,
          interval: float = 2.0, out: IO[str] | None = None) -> int:
    """Jobs by state, machines by endpoint and spend, refreshed in place every `interval`
    seconds until interrupted (or printed once)."""
    out = out or sys.stdout
    if plain is None:
        plain = not out.isatty()
    if plain:
        last = ""
        while True:
            line = plain_line(c.overview())
            if line.split(" ", 1)[1] != last:  # print what changed, not every refresh
                print(line, file=out, flush=True)
                last = line.split(" ", 1)[1]
            if once:
                return 0
            time.sleep(interval)
    console = Console(file=out)
    if once:
        console.print(tables(c.overview()))
        return 0
    with Live(tables(c.overview()), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            live.update(tables(c.overview()))
