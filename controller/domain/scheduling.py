"""The VM scheduler's decision: a pure function of (queue state, machines, endpoint config,
time). The loop in controller/reconcile/loop.py does the I/O around it; the same function can be
replayed from recorded inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.domain.delivery import Delivery
from controller.domain.demand import waiting_demand
from controller.domain.fleet import (
    Budget,
    Decision,
    EndpointSpec,
    Removal,
    check_health,
    live_machines,
    machine_name,
)
from controller.domain.machines import MachineState, MachineView
from controller.domain.packing import decide_priced
from controller.domain.refusals import Refusal, blocking
from controller.domain.taskqueues import TaskQueue

__all__ = ["Budget", "Decision", "EndpointSpec", "Removal", "decide"]


def decide(
    spec: EndpointSpec,
    queues: Sequence[TaskQueue],
    machines: Sequence[MachineView],
    now: float,
    last_seq: int,
    *,
    prices: Mapping[str, float] | None = None,
    budget: Budget | None = None,
    refusals: Sequence[Refusal] = (),
    delivery: Sequence[Delivery] = (),
) -> Decision:
    """Decide which machines this endpoint should have.

    An endpoint with `offers` (machine types x zones x markets) is decided by price and fit
    in domain/packing.py, with `prices` (spot price per 'type/zone') and the `budget` left of
    the controller-wide limits; offers a cloud refused lately (`refusals` that block at `now`,
    domain/refusals.py) are not considered, and an offer's score adds the expected cost of
    its measured delay (`delivery`, domain/delivery.py). Otherwise, for its single machine shape:

    1. Record what the world says: running machines silent for `lost_after` are lost; machines
       booting for longer than `boot_timeout` have failed.
    2. Demand: waiting jobs of every task queue that can run here, in machines' worth
       (task queue jobs / jobs one machine holds). Unfit queues are named in the reasons.
    3. Start enough machines to cover demand minus free capacity (free slots of running machines
       plus machines still booting; domain/demand.py), capped by max_machines and
       max_starts_per_cycle.
    4. Stop machines idle longer than `idle_timeout`, by name, while what is left still covers
       the waiting work.
    """
    if spec.offers:
        return decide_priced(spec, queues, machines, now, last_seq, prices or {},
                             budget or Budget(), blocking(refusals, now),
                             {d.pool: d for d in delivery})
    reasons: list[str] = []
    live = live_machines(machines)
    removals = check_health(spec, live, now)
    gone = {r.name for r in removals}
    kept = [m for m in live if m.name not in gone]

    need = waiting_demand(queues, spec.shape, spec.slots, kept)
    reasons.extend(need.unfit)
    demand, free = need.machines, need.supply  # free: of running machines, plus booting ones
    new = need.uncovered
    if new:
        room = max(spec.max_machines - len(kept), 0)
        n = min(new, room, spec.max_starts_per_cycle)
        if n < new:
            reasons.append(
                f"{new} machines wanted for {demand:.1f} machines of waiting work; starting {n}"
                f" (max_machines {spec.max_machines}, {len(kept)} live,"
                f" max_starts_per_cycle {spec.max_starts_per_cycle})"
            )
        else:
            reasons.append(f"starting {n} for {demand:.1f} machines of waiting work")
        new = n
    start = tuple(machine_name(spec.name, last_seq + i + 1) for i in range(new))

    # Idle machines go, longest idle first, as long as the capacity left still covers the
    # waiting work (an idle machine that fits waiting work takes it at its next poll).
    idle = sorted((m for m in kept if m.managed and m.state == MachineState.RUNNING
                   and not m.busy_slots and m.idle_since is not None
                   and now - m.idle_since >= spec.idle_timeout), key=lambda m: m.idle_since or 0)
    for m in idle:
        if free - 1.0 < demand - 1e-9:
            break
        free -= 1.0
        secs = now - (m.idle_since or now)
        removals.append(Removal(m.name, MachineState.STOPPING,
                                f"idle for {secs:.0f}s (>= {spec.idle_timeout:.0f}s)"))
    gone = {r.name for r in removals}
    # the driver's wanted set: machines it manages; pilots that joined on their own are
    # capacity, but not the driver's to create or delete
    kept_names = [m.name for m in live if m.name not in gone and m.managed]
    wanted = tuple(sorted(kept_names + list(start)))
    return Decision(spec.name, start, tuple(removals), wanted, demand, tuple(reasons))
