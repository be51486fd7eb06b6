"""Waiting work against capacity, in machines' worth, for an endpoint of one machine shape:
the part of the decision that domain/scheduling.py (`decide`, the plain path) and
domain/batch.py (`decide_batch`, where a machine is a pilot job) share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer, jobs_per_machine, why_not
from controller.domain.taskqueues import TaskQueue


@dataclass(frozen=True)
class Demand:
    machines: float  # waiting jobs of the task queues that fit one machine, in machines' worth
    supply: float  # what the live machines still take, in machines' worth
    unfit: tuple[str, ...] = ()  # one reason a waiting task queue that fits no machine

    @property
    def uncovered(self) -> int:
        """Machines to start for the waiting work the live machines do not cover."""
        return max(0, math.ceil(self.machines - self.supply - 1e-9))


def free_share(state: MachineState | None, slots: int, busy_slots: int) -> float:
    """What one live machine still takes, in machines' worth: a running one its free slots
    (as a share of its slots); one on its way (requested, booting, a pilot job pending in a
    batch system) all of it, as its slots are all free once it registers."""
    if state == MachineState.RUNNING:
        return max(slots - busy_slots, 0) / max(slots, 1)
    return 1.0


def waiting_demand(queues: Sequence[TaskQueue], shape: SlotOffer, slots: int,
                   live: Iterable[MachineView]) -> Demand:
    """The waiting work of `queues` that fits one machine of `shape` with `slots` pilot slots,
    in machines' worth (a queue's waiting jobs / the jobs one machine holds at once), and the
    `live` machines' free share (`free_share`) against it. A waiting queue that does not fit
    the shape adds no demand and one reason. Both callers count a machine on its way as whole
    and a running one by its free slots; they differ only in which machines they pass as
    live. A shape that holds no job at once (0 slots, cores or memory: settings forbid it)
    counts one job per machine."""
    need = 0.0
    unfit: list[str] = []
    for q in queues:
        if q.waiting <= 0:
            continue
        r = why_not(q.requirements, shape)
        if r is not None:
            unfit.append(f"task queue {q.id} ({q.waiting} waiting) cannot run here: {r}")
            continue
        need += q.waiting / max(jobs_per_machine(q.requirements, shape, slots), 1)
    supply = 0.0
    for m in live:
        supply += free_share(m.state, m.slots, m.busy_slots)
    return Demand(need, supply, tuple(unfit))
