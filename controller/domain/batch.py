"""Pilots as jobs of a batch system (a Slurm or Grid Engine cluster reached over SSH): which
pilot jobs to submit and which to cancel. Pure: the batch system's view of each pilot job, the
machines as the store keeps them, the queue and `now` come in; a decision comes out.

A pilot job is a machine: submitted and pending in the batch system -> booting; running with
its pilot registered -> running; ended -> gone (stopped when idle; lost when it still held
jobs, which go back to the queue: as interrupted, using no retry, when the site ended it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from controller.domain.demand import waiting_demand
from controller.domain.fleet import health
from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer
from controller.domain.scheduling import Decision, Removal, machine_name
from controller.domain.taskqueues import TaskQueue

M = MachineState


class BatchState(StrEnum):
    PENDING = "pending"  # queued in the batch system
    RUNNING = "running"  # given a node: its pilot starts (or runs)
    ENDED = "ended"  # done, failed, cancelled, out of wall time


@dataclass(frozen=True)
class BatchJob:
    """One pilot job as the batch system reports it."""

    id: str
    machine: str  # the machine it is (the job's name)
    state: BatchState
    detail: str  # the system's own words, e.g. "PENDING (Resources)", "CANCELLED by 0"
    by_site: bool = False  # ended by the site: cancelled, wall time, preempted, node failure
    failed: bool = False  # ended on its own with an error (e.g. the pilot would not start)
    node: str | None = None
    started_at: float | None = None


@dataclass(frozen=True)
class BatchSpec:
    """The parts of a batch endpoint's configuration the decision needs."""

    name: str
    shape: SlotOffer  # what one pilot job asks for (cores, memory) and may run (max_runtime)
    slots: int = 1
    max_machines: int = 4  # pilot jobs pending or running at once
    max_queued: int = 2  # pilot jobs pending in the batch system at once
    max_starts_per_cycle: int = 2
    pending_timeout: float = 600.0  # cancel a pilot job pending longer, and back off
    pending_backoff: float = 300.0
    boot_timeout: float = 120.0  # running in the batch system, no pilot registered yet
    lost_after: float = 60.0  # a registered pilot silent this long is lost


@dataclass(frozen=True)
class PilotJob:
    """One live machine of a batch endpoint: the store's view and the batch system's."""

    machine: MachineView
    batch_id: str | None  # recorded at submission (None: being submitted)
    submitted_at: float | None
    job: BatchJob | None  # None: the batch system did not report it


@dataclass(frozen=True)
class BatchDecision:
    decision: Decision  # start (to submit), remove (with the state each machine moves to)
    cancel: tuple[str, ...] = ()  # machines whose pilot jobs to cancel
    interrupted: tuple[str, ...] = ()  # lost machines whose jobs go back using no retry
    hold_until: float = 0.0  # submit nothing before this (pending back-off)


def decide_batch(spec: BatchSpec, queues: Sequence[TaskQueue], pilots: Sequence[PilotJob],
                 now: float, last_seq: int, *, seen_at: float | None, hold_until: float = 0.0,
                 down_by: str | None = None) -> BatchDecision:
    """Decide which pilot jobs to submit and cancel.

    1. What the batch system says: an ended job's machine is gone (stopped if idle, lost if it
       held jobs; failed if it ended in error before its pilot registered); a job pending
       longer than `pending_timeout` is cancelled and submissions are held for
       `pending_backoff`; a job running with no pilot after `boot_timeout`, or whose pilot
       went silent for `lost_after`, is cancelled. A job submitted after the batch system was
       last asked (`seen_at`) is not judged yet.
    2. Demand: waiting jobs of task queues that fit one pilot job, in pilots' worth; supply:
       pilots pending or starting (whole), and free slots of registered ones
       (domain/demand.py, as for a cloud endpoint's machines).
    3. Submit the difference, capped by `max_machines` (live pilot jobs), `max_queued`
       (pending ones), `max_starts_per_cycle`; nothing while held or taken down.
    Idle pilots are not cancelled: they exit on their own after their idle timeout.
    """
    removals: list[Removal] = []
    cancel: list[str] = []
    interrupted: list[str] = []
    reasons: list[str] = []
    kept: list[PilotJob] = []
    for p in pilots:
        m, job = p.machine, p.job
        if m.state == M.STOPPING:
            if job is not None and job.state == BatchState.ENDED:
                removals.append(Removal(m.name, M.STOPPED, f"batch job {job.id} ended: "
                                        f"{job.detail}"))
            elif job is None and _unseen(p, seen_at):
                removals.append(Removal(m.name, M.STOPPED,
                                        f"batch job {p.batch_id} no longer known"))
            continue  # cancelled already, or its pilot drains
        if m.state == M.REQUESTED or p.batch_id is None:
            kept.append(p)  # being submitted
            continue
        gone = job.state == BatchState.ENDED if job is not None else _unseen(p, seen_at)
        if gone:
            what = (f"batch job {p.batch_id} ended: {job.detail}" if job is not None
                    else f"batch job {p.batch_id} is no longer known to the batch system")
            if m.busy_slots:
                removals.append(Removal(m.name, M.LOST, what))
                if job is not None and job.by_site:
                    interrupted.append(m.name)
            elif m.state == M.BOOTING and job is not None and job.failed:
                removals.append(Removal(m.name, M.FAILED, f"{what} (its pilot never "
                                        "registered)"))
            else:
                removals.append(Removal(m.name, M.STOPPED, what))
            continue
        if down_by:
            removals.append(Removal(m.name, M.STOPPING, f"taken down by {down_by}"))
            cancel.append(m.name)
            continue
        pending = job is None or job.state == BatchState.PENDING
        if m.state == M.BOOTING and pending and p.submitted_at is not None \
                and now - p.submitted_at > spec.pending_timeout:
            waited = now - p.submitted_at
            why = (f"pending in the batch system for {waited:.0f}s (> "
                   f"{spec.pending_timeout:.0f}s): {job.detail if job else 'not seen'}")
            removals.append(Removal(m.name, M.STOPPING, why))
            cancel.append(m.name)
            hold_until = max(hold_until, now + spec.pending_backoff)
            reasons.append(f"{m.name} {why}; no new pilot jobs for "
                           f"{spec.pending_backoff:.0f}s")
            continue
        started = job.started_at if job is not None and job.started_at else None
        sick = health(m.name, m.state, m.last_seen,
                      started if m.state == M.BOOTING and not pending else None, now,
                      spec.lost_after, spec.boot_timeout, f"batch job {p.batch_id} running: ")
        if sick is not None:
            removals.append(sick)
            cancel.append(m.name)
            continue
        kept.append(p)

    need = waiting_demand(queues, spec.shape, spec.slots, (p.machine for p in kept))
    reasons.extend(need.unfit)
    demand = need.machines
    queued = sum(1 for p in kept if p.machine.state != M.RUNNING
                 and (p.job is None or p.job.state == BatchState.PENDING))
    new = need.uncovered
    if new and down_by:
        reasons.append(f"{_jobs(new)} wanted; none submitted: taken down by {down_by}")
        new = 0
    elif new and now < hold_until:
        reasons.append(f"{_jobs(new)} wanted; none submitted for {hold_until - now:.0f}s "
                       "more (a pilot job pended too long)")
        new = 0
    elif new:
        caps = {"max_machines": spec.max_machines - len(kept),
                "max_queued": spec.max_queued - queued,
                "max_starts_per_cycle": spec.max_starts_per_cycle}
        n = max(0, min(new, *caps.values()))
        if n < new:
            held = ", ".join(f"{k} leaves {max(v, 0)}" for k, v in caps.items() if v < new)
            reasons.append(f"{_jobs(new)} wanted for {demand:.1f} pilots of waiting work; "
                           f"submitting {n} ({held}; {queued} pending, {len(kept)} live)")
        else:
            reasons.append(f"submitting {_jobs(n)} for {demand:.1f} pilots of waiting work")
        new = n
    start = tuple(machine_name(spec.name, last_seq + i + 1) for i in range(new))
    removed = {r.name for r in removals}
    wanted = tuple(sorted([p.machine.name for p in kept if p.machine.name not in removed]
                          + list(start)))
    return BatchDecision(Decision(spec.name, start, tuple(removals), wanted, demand,
                                  tuple(reasons)), tuple(cancel), tuple(interrupted),
                         hold_until)


def _jobs(n: int) -> str:
    return f"{n} pilot job{'' if n == 1 else 's'}"


def _unseen(p: PilotJob, seen_at: float | None) -> bool:
    """The batch system was asked after this job was submitted and did not report it."""
    return seen_at is not None and p.submitted_at is not None and seen_at > p.submitted_at
