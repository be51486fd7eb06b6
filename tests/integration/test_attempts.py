"""At most one attempt of a job runs at any moment, with real pilots: a pilot killed, frozen or
stopped mid-job never leaves its payload running beside the next attempt, and a job's
leftover processes die with it. Payloads write a ledger (start, a tick every 0.1 s, end)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from bench.faults import UNSANDBOXED, overlapping, payload, read_ledger
from tests.conftest import sh, wait_until

LEASE = 3.0  # lease in the tests' controllers; lease_margin is 1


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pilot(ctrl, machine: str, **kw):
    return ctrl.start_pilot(machine, **UNSANDBOXED, **kw)  # they write the test's ledger


def second_attempt(ctrl, jid: int) -> dict:
    return dict(wait_until(lambda: (j := ctrl.job(jid))["attempt"] == 2
                           and j["state"] == "running" and j, 20, what="a second attempt"))


def running_pids(ledger: Path, job: int) -> set[int]:
    spans, _ = read_ledger(ledger)
    return set(spans.get(job, {}))


def running_on_one_pilot(make_controller, tmp_path: Path) -> tuple[Any, Path, int, Any, int]:
    """A controller, a job writing the ledger, running on pilot m1: (controller, ledger, job
    id, the pilot's process, the payload's PID)."""
    ctrl = make_controller()
    ledger = tmp_path / "ledger"
    (jid,) = ctrl.submit("alice", payload(ledger, 30))
    first = pilot(ctrl, "m1")
    ctrl.wait_state(jid, "running")
    wait_until(lambda: running_pids(ledger, jid), 10, what="the payload")
    (pid,) = running_pids(ledger, jid)
    return ctrl, ledger, jid, first, pid


def test_a_killed_pilots_payload_dies_at_once_and_runs_again_only_after_its_lease(
        make_controller, tmp_path):
    ctrl, ledger, jid, first, pid = running_on_one_pilot(make_controller, tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not alive(pid), 3, what="the payload to die with its pilot")
    pilot(ctrl, "m2")
    j = second_attempt(ctrl, jid)
    assert j["machine"] == "m2"
    assert time.monotonic() - killed >= LEASE - 1.0  # not before the lease ran out
    spans, _ = read_ledger(ledger)
    assert not overlapping(spans[jid])
    with ctrl.client("alice") as c:
        c.post(f"/api/v1/jobs/{jid}/kill")


def test_a_frozen_pilots_payload_is_killed_by_its_lease_and_the_pilot_then_stands_down(
        make_controller, tmp_path):
    ctrl, ledger, jid, first, pid = running_on_one_pilot(make_controller, tmp_path)
    os.kill(first.pid, signal.SIGSTOP)  # frozen: no heartbeat, no renewal, no kill from it
    try:
        wait_until(lambda: not alive(pid), LEASE + 2, what="the shepherd to end the payload")
        pilot(ctrl, "m2")
        assert second_attempt(ctrl, jid)["machine"] == "m2"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # the first pilot wakes: its attempt is over, and it must not count
    log = ctrl.root / "pilots" / "m1" / "pilot.log"
    # its late report is refused: its attempt is over (409), or, its machine having been
    # called lost while it was frozen, its credential with it (401, issue 26)
    wait_until(lambda: "attempt 1 of job" in log.read_text()
               or f"report of job {jid} refused: 401" in log.read_text(), 10, 0.1,
               "the woken pilot's late report to be refused")
    j = ctrl.job(jid)
    assert (j["state"], j["machine"], j["attempt"]) == ("running", "m2", 2)
    spans, _ = read_ledger(ledger)
    assert len(spans[jid]) == 2 and not overlapping(spans[jid])
    with ctrl.client("alice") as c:
        c.post(f"/api/v1/jobs/{jid}/kill")


def test_sigterm_reports_every_held_job_before_the_pilot_leaves(make_controller, tmp_path):
    ctrl = make_controller()
    ids = ctrl.submit("alice", *[sh("sleep 30")] * 3)
    p = pilot(ctrl, "m1", slots=3, cores=4)
    for jid in ids:
        ctrl.wait_state(jid, "running")
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0
    for jid in ids:  # at once, not after a stall: interrupted, rescheduled, no retry used
        j = ctrl.job(jid)
        assert (j["state"], j["retries"]) == ("waiting", 0), j
        assert [e["to_state"] for e in ctrl.events(jid)][-2:] == ["rescheduled", "waiting"]
    with ctrl.client() as c:
        m1 = next(m for m in c.get("/api/v1/machines", params={"all": True}).json()
                  if m["name"] == "m1")
        events = c.get("/api/v1/machines/m1/events").json()
    assert m1["state"] == "stopped"
    stopped_at = next(e["at"] for e in events if e["to_state"] == "stopped")
    assert all(ev["at"] <= stopped_at for jid in ids for ev in ctrl.events(jid)
               if ev["to_state"] == "rescheduled")  # its jobs were given back first


def test_a_jobs_leftover_processes_die_when_it_ends(make_controller, tmp_path):
    ctrl = make_controller()
    pidfile = tmp_path / "left"
    (jid,) = ctrl.submit("alice", sh(f"sleep 177 & echo $! >> {pidfile}; "
                                     f"setsid sleep 178 & echo $! >> {pidfile}; exit 0"))
    pilot(ctrl, "m1")
    ctrl.wait_state(jid, "done")
    left = [int(x) for x in pidfile.read_text().split()]
    assert len(left) == 2
    wait_until(lambda: not any(alive(p) for p in left), 3, what="the leftovers to die")
