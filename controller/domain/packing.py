"""Price-aware decisions for an endpoint that offers several machine types x zones x markets.

Pure: every outside fact comes in as data (task queues, machines, offers, spot prices now,
the budget left), so the simulator and `cloudpilot replay` run exactly this code.

One tick:
1. Health, as for every endpoint (lost, failed), then the market: a running spot machine
   whose price rose above its pool's max price is removed (its pilot is stopped, its jobs are
   rescheduled as interrupted) and its work is added to the demand, so the capacity is
   replaced this tick where it is now cheapest.
2. Demand: waiting jobs by task queue, as items (cores, memory, count, the pools they may use:
   they must fit, and a job with `spot = false` never goes on spot).
3. Free capacity first: items are placed, largest first, on the free slots of machines that
   are busy, then booting, then idle (cheapest per core first).
4. What is left is packed onto new machines, greedily: for every offer, fill one machine
   first-fit decreasing; its cost per used core-hour (price / cores it would use) times a
   diversity factor (1 + diversity x the pool's share of the fleet's cores) is its score;
   the best offer gets a batch of identical machines; repeat. Limits cap it: max machines,
   max starts per cycle, max spend per hour (the endpoint's and the controller's).
5. Idle machines past the idle timeout that no waiting job was placed on are stopped,
   the most expensive per core first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from controller.domain.delivery import Delivery
from controller.domain.fleet import (
    Budget,
    Decision,
    EndpointSpec,
    Removal,
    check_health,
    live_machines,
    machine_name,
)
from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer, fits, unmatchable_reason
from controller.domain.placement import outlives
from controller.domain.pricing import Candidate, Launch, Offer
from controller.domain.refusals import Refusal, describe
from controller.domain.taskqueues import TaskQueue

M = MachineState
BATCH_SHARE = 4  # a batch of identical machines is at most 1/4 of what is left to place
SLOW_MARGIN = 60.0  # seconds: see _rooms


@dataclass
class Item:
    """Waiting jobs of one shape: `n` jobs of `cores` and `memory_mb`."""

    label: str
    cores: int
    memory_mb: int
    n: int
    pools: frozenset[str]
    runtime: float = 3600.0  # how long each may run (its max_runtime): a machine lives as long
    predicted: float | None = None  # how long each should run (None: `runtime`)
    rung: str = ""  # the fallback ladder: which rung its machines are on, and why


@dataclass
class Room:
    """Free capacity of one machine (live or about to start)."""

    name: str
    spot: bool
    pool: str | None
    slots: int
    cores: int
    memory_mb: int
    used: int = 0
    draining: bool = False
    total: int = 0  # the machine's cores in all
    last: float = math.inf  # work that should end later than this does not go here
    busy: float = 0.0  # when its running jobs should end (predicted; 0: not known)
    strand_limit: float | None = None  # spec.strand_limit, for a machine running jobs

    def holds(self, item: Item, now: float) -> bool:
        end = now + (item.predicted or item.runtime)
        return (self.cores >= item.cores and self.memory_mb >= item.memory_mb
                and end <= self.last
                and (self.strand_limit is None or not self.busy or outlives(
                    self.busy, end, self.total, item.cores, self.strand_limit)))

    def take(self, item: Item, n: int) -> int:
        if self.pool is not None and self.pool not in item.pools:
            return 0  # a pool the job may not use (too small, or spot for a spot = false job)
        k = min(n, self.slots, self.cores // max(item.cores, 1),
                self.memory_mb // max(item.memory_mb, 1))
        if k > 0:
            self.slots -= k
            self.cores -= k * item.cores
            self.memory_mb -= k * item.memory_mb
            self.used += k
        return max(k, 0)


@dataclass
class Deciding:
    """The running state of one priced decision (not a plan: domain/plans.py has those)."""

    spec: EndpointSpec
    prices: Mapping[str, float]
    offers: dict[str, Offer]
    pool_cores: dict[str, int] = field(default_factory=dict)
    fleet_cores: int = 0
    spend: float = 0.0
    reasons: list[str] = field(default_factory=list)

    quotes: dict[str, float | None] = field(default_factory=dict)  # pool -> price now
    # offers a cloud refused lately (capacity, quota), by pool: not considered this tick
    blocked: dict[str, Refusal] = field(default_factory=dict)
    now: float = 0.0
    # what each offer delivered lately (measured boot, pilots that never registered)
    delivery: Mapping[str, Delivery] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)  # pool -> expected seconds

    def price(self, o: Offer) -> float | None:
        p = self.quotes.get(o.pool, -1.0)
        if p == -1.0:
            p = self.quotes[o.pool] = o.price(self.prices)
        return p

    def add(self, pool: str | None, cores: int, price: float | None) -> None:
        if pool is not None:
            self.pool_cores[pool] = self.pool_cores.get(pool, 0) + cores
        self.fleet_cores += cores
        self.spend += price or 0.0


def _slot_offer(spec: EndpointSpec, o: Offer) -> SlotOffer:
    return SlotOffer(spec.name, o.cores, o.memory_mb, spec.shape.tags, spec.shape.max_runtime,
                     spot=o.spot, on_demand=not o.spot)


def _fill(o: Offer, items: Sequence[Item]) -> list[tuple[Item, int]]:
    """First-fit decreasing of the waiting items into one empty machine of offer `o`."""
    room = Room("", o.spot, o.pool, o.n_slots, o.cores, o.memory_mb)
    taken = []
    for it in items:
        if it.n <= 0 or o.pool not in it.pools:
            continue
        k = room.take(it, it.n)
        if k:
            taken.append((it, k))
        if room.slots <= 0 or room.cores <= 0:
            break
    return taken


def decide_priced(
    spec: EndpointSpec,
    queues: Sequence[TaskQueue],
    machines: Sequence[MachineView],
    now: float,
    last_seq: int,
    prices: Mapping[str, float],
    budget: Budget,
    blocked: Mapping[str, Refusal] | None = None,
    delivery: Mapping[str, Delivery] | None = None,
) -> Decision:
    plan = Deciding(spec, prices, {o.pool: o for o in spec.offers},
                blocked={k: v for k, v in (blocked or {}).items() if k in
                         {o.pool for o in spec.offers}}, now=now, delivery=delivery or {})
    if plan.blocked:
        plan.reasons.append(f"{len(plan.blocked)} of {len(spec.offers)} offers blocked after "
                            "a refusal: " + ", ".join(sorted(plan.blocked)))
    live = live_machines(machines)
    removals = check_health(spec, live, now)
    gone = {r.name for r in removals}
    kept = [m for m in live if m.name not in gone]

    # 1. the market: spot machines priced out are replaced now
    displaced: list[Item] = []
    for m in kept:
        o = plan.offers.get(m.pool or "")
        if o is None or not o.spot:
            continue
        p = plan.price(o)
        if p is not None and p > o.bid:
            removals.append(Removal(m.name, M.STOPPING,
                                    f"spot price ${p:.4f}/h of {o.pool} is above its max "
                                    f"${o.bid:.4f}/h: replaced where it is cheapest now"))
            if m.busy_slots:
                busy_cores = max(o.cores - m.free_cores, m.busy_slots)
                busy_mem = max(o.memory_mb - m.free_memory_mb, 0)
                per_c = math.ceil(busy_cores / m.busy_slots)
                per_m = busy_mem // m.busy_slots
                displaced.append(Item(f"jobs of {m.name}", per_c, per_m, m.busy_slots,
                                      _pools(spec, per_c, per_m, spot_ok=True)))
    gone = {r.name for r in removals}
    kept = [m for m in kept if m.name not in gone]

    # 2. demand
    items = displaced + _items(spec, plan, queues, now)
    items.sort(key=lambda it: (-it.cores, -it.memory_mb, it.label))
    cheapest = _cheapest_per_core(plan)
    demand_cores = sum(it.n * it.cores for it in items)
    demand = demand_cores / cheapest.cores if cheapest else 0.0

    # 3. free capacity of the machines we keep
    plan.delays = _delays(spec, plan, kept, now)
    rooms = _rooms(spec, plan, kept, now)
    for m in kept:
        o = plan.offers.get(m.pool or "")
        plan.add(m.pool, o.cores if o else m.free_cores, plan.price(o) if o else None)
    # a room stays open while some item still to come could fit in it
    need_c, need_m = [0] * (len(items) + 1), [0] * (len(items) + 1)
    need_c[-1] = need_m[-1] = 1 << 60
    for i in range(len(items) - 1, -1, -1):
        need_c[i] = min(need_c[i + 1], items[i].cores)
        need_m[i] = min(need_m[i + 1], items[i].memory_mb)
    open_rooms = [r for r in rooms if r.slots > 0 and r.cores > 0]
    for i, it in enumerate(items):
        if not open_rooms:
            break
        still = []
        for room in open_rooms:
            if it.n > 0 and room.holds(it, now):
                it.n -= room.take(it, it.n)
            if room.slots > 0 and room.cores >= need_c[i + 1] and (
                    room.memory_mb >= need_m[i + 1]):
                still.append(room)
        open_rooms = still
    used = {r.name for r in rooms if r.used}

    # 4. new machines for what is left, and for the headroom: free cores kept for work that
    # arrives before the next machine could boot
    spare = sum(r.cores for r in rooms if not r.draining)
    in_rooms = {r.name for r in rooms}
    live_cores = sum(r.total for r in rooms) + sum(
        _cores(plan, m) for m in kept if m.name not in in_rooms)
    want = math.ceil(spec.headroom * live_cores) if spec.headroom else 0
    short = 0
    if want > spare and plan.offers:
        short = want - spare
        items.append(Item("headroom", 1, 1, short, frozenset(plan.offers), 3600.0))  # any pool
    started = _launch(spec, plan, items, len(kept), budget, last_seq)
    left = sum(it.n for it in items if it.label != "headroom")
    if left:
        plan.reasons.append(f"{left} waiting jobs not covered this tick (limits above)")
    if short:
        plan.reasons.append(f"headroom: {want} free cores wanted, {spare} free")

    # 5. idle machines nobody needs; draining ones as soon as they are empty
    idle = [m for m in kept if m.managed and m.state == M.RUNNING and not m.busy_slots
            and m.idle_since is not None and m.name not in used
            and (m.draining or now - m.idle_since >= spec.idle_timeout)]
    idle.sort(key=lambda m: (-_per_core(plan, m), m.idle_since or 0.0, m.name))
    for m in idle:
        if not m.draining and spare - _cores(plan, m) < want:
            continue  # kept as headroom
        spare -= 0 if m.draining else _cores(plan, m)
        secs = now - (m.idle_since or now)
        why = ("drained: its last job ended" if m.draining
               else f"idle for {secs:.0f}s (>= {spec.idle_timeout:.0f}s)")
        removals.append(Removal(m.name, M.STOPPING, why))
    gone = {r.name for r in removals}

    # 6. consolidation: with no work left over, the emptiest machines drain
    drain = _drain(spec, plan, [m for m in kept if m.name not in gone], used,
                   bool(left or started))
    kept_names = [m.name for m in live if m.name not in gone and m.managed]
    start = tuple(launch.name for launch in started)
    return Decision(spec.name, start, tuple(removals), tuple(sorted(kept_names + list(start))),
                    demand, tuple(plan.reasons), tuple(started),
                    _candidates(spec, plan, started), drain)


def _drain(spec: EndpointSpec, plan: Deciding, machines: Sequence[MachineView], used: set[str],
           short: bool) -> tuple[str, ...]:
    """Machines that take no new jobs and stop when their last job ends: those draining
    already (unless waiting work was placed on them), and, when the waiting work is covered
    without them and nothing is started, the busy machines using at most `drain_below` of
    their cores whose jobs should end soonest (predicted; then the emptiest), within
    `drain_budget` of the live machines."""
    keep = [m for m in machines if m.draining and m.name not in used]
    budget = max(1, math.floor(spec.drain_budget * len(machines))) if spec.drain_budget else 0
    if short or len(keep) >= budget or len(machines) < 2:
        return tuple(sorted(m.name for m in keep))
    cands = []
    for m in machines:
        o = plan.offers.get(m.pool or "")
        if (o is None or m.draining or m.name in used or not m.managed
                or m.state != M.RUNNING or not m.busy_slots):
            continue
        share = (o.cores - m.free_cores) / o.cores
        if share <= spec.drain_below:  # those whose jobs should end soonest (predicted) first
            cands.append((m.busy_until or math.inf, share, -_per_core(plan, m), m.name))
    cands.sort()
    names = [m.name for m in keep] + [c[-1] for c in cands[:budget - len(keep)]]
    if cands[:budget - len(keep)]:
        plan.reasons.append(f"draining {len(names)} of {len(machines)} machines: the rest "
                            "hold the waiting work")
    return tuple(sorted(names))


def _pools(spec: EndpointSpec, cores: int, memory_mb: int, spot_ok: bool) -> frozenset[str]:
    out = set()
    for o in spec.offers:
        if (spot_ok or not o.spot) and o.cores >= cores and o.memory_mb >= memory_mb:
            out.add(o.pool)
    return frozenset(out)


def _items(spec: EndpointSpec, plan: Deciding, queues: Sequence[TaskQueue],
           now: float) -> list[Item]:
    items = []
    shapes = [(o, _slot_offer(spec, o)) for o in spec.offers]
    known: dict[Requirements, list[Offer]] = {}
    for q in queues:
        if q.waiting <= 0:
            continue
        req = q.requirements
        fitting = known.get(req)
        if fitting is None:  # the offers it fits, in the markets it allows
            fitting = known[req] = [o for o, shape in shapes
                                    if _allows(req, o.market) and fits(req, shape)]
        if not fitting:
            allowed = [shape for o, shape in shapes if _allows(req, o.market)]
            why = (unmatchable_reason(req, allowed) if allowed
                   else "it needs on-demand machines (spot = false) and none is offered"
                   if not req.spot else "it needs spot machines (spot_only) and none is "
                   "offered")
            plan.reasons.append(f"task queue {q.id} ({q.waiting} waiting) cannot run here: "
                                f"{why}")
            continue
        markets, rung = _rung(spec, q, {o.market for o in fitting}, now)
        pools = frozenset(o.pool for o in fitting if o.market in markets)
        # a new machine's life by the jobs' max_runtime, not their predicted run time: that
        # measured better (the predictions' errors strand cores on big machines: LCG 1.152 x
        # the bound with them, 1.124 x without; CTC-SP2 1.393 x and 1.395 x)
        items.append(Item(f"task queue {q.id}", req.cores, req.memory_mb, q.waiting, pools,
                          float(req.max_runtime), q.predicted_runtime, rung))
    return items


def _allows(req: Requirements, market: str) -> bool:
    """Whether a job may run in a market: `spot = false` never on spot, `spot_only` never on
    demand."""
    if not req.spot:
        return market != "spot"
    return market == "spot" if req.spot_only else True


def _rung(spec: EndpointSpec, q: TaskQueue, offered: set[str],
          now: float) -> tuple[frozenset[str], str]:
    """The fallback ladder: the markets a task queue may use now, and its rung in words.
    Its markets in the endpoint's `ladder` order (spot, then on-demand) are its rungs; it
    climbs one each `fallback_after` (the job's, else the endpoint's) its oldest job has
    waited, and may use every rung up to its own (the cheapest wins among them). No deadline,
    or one rung: every market at once."""
    req = q.requirements
    rungs = [m for m in spec.ladder if m in offered] + sorted(offered - set(spec.ladder))
    deadline = req.fallback_after if req.fallback_after is not None else spec.fallback_after
    if deadline is None or len(rungs) < 2:
        return frozenset(offered), ""
    waited = max(now - q.oldest, 0.0) if q.oldest is not None else 0.0
    k = len(rungs) - 1 if deadline <= 0 else min(int(waited // deadline), len(rungs) - 1)
    where = f"rung {k + 1} of {len(rungs)}, {rungs[k]}"
    if k == 0:
        why = f"{rungs[1]} after {deadline - waited:.0f}s more"
    else:
        why = f"its oldest job waited {waited:.0f}s >= fallback_after {deadline:.0f}s"
    return frozenset(rungs[:k + 1]), f"{where}: {why}"


def _rooms(spec: EndpointSpec, plan: Deciding, kept: Sequence[MachineView],
           now: float) -> list[Room]:
    """Free capacity, in the order work is placed on it: busy machines (fill them up), then
    booting ones, then idle ones from the cheapest per core, then draining ones. A machine
    booting for well over what the quickest offer measured takes to deliver (twice, and a
    minute) is not counted on (with `wait_cost`): a new one there should be up sooner."""
    quick = min((d.expected_delay(spec.boot_timeout) for d in plan.delivery.values()
                 if d.registered), default=math.inf) if spec.wait_cost else math.inf
    quick = 2 * quick + SLOW_MARGIN
    rooms = []
    for m in kept:
        o = plan.offers.get(m.pool or "")
        if m.state in (M.BOOTING, M.REQUESTED):
            if o is None or now - m.created_at > quick:
                continue
            rank = (1, 0.0)
            room = Room(m.name, o.spot, o.pool, o.n_slots, o.cores, o.memory_mb, total=o.cores)
        else:
            free_slots = max(m.slots - m.busy_slots, 0)
            if free_slots <= 0:
                continue
            # a busy machine has what its jobs leave (none: it holds nothing more, whatever
            # slots it has left)
            cores, mem = m.free_cores, m.free_memory_mb
            if m.busy_slots == 0 and o is not None:  # idle: its whole machine is free
                cores, mem = o.cores, o.memory_mb
            rank = (0, 0.0) if m.busy_slots else (2, _per_core(plan, m))
            if m.draining:  # only if nothing else can hold the work (it stops draining)
                rank = (3, -free_slots)
            room = Room(m.name, o.spot if o else False, o.pool if o else None, free_slots,
                        cores, mem, draining=m.draining, total=o.cores if o else cores)
            if m.busy_slots and m.busy_until and spec.extend_limit is not None:
                room.last = m.busy_until + spec.extend_limit
            if m.busy_slots and m.busy_until:
                room.busy, room.strand_limit = m.busy_until, spec.strand_limit
        rooms.append((rank, m.name, room))
    rooms.sort(key=lambda r: (r[0], r[1]))
    return [r for _, _, r in rooms]


def _cores(plan: Deciding, m: MachineView) -> int:
    o = plan.offers.get(m.pool or "")
    return o.cores if o is not None else m.free_cores


def _per_core(plan: Deciding, m: MachineView) -> float:
    o = plan.offers.get(m.pool or "")
    if o is None:
        return 0.0
    p = plan.price(o)
    return (p if p is not None else o.on_demand_price) / o.cores


def _cheapest_per_core(plan: Deciding) -> Offer | None:
    best: tuple[float, Offer] | None = None
    for o in plan.offers.values():
        p = plan.price(o)
        if p is not None and (best is None or p / o.cores < best[0]):
            best = (p / o.cores, o)
    return best[1] if best else None


def _available(plan: Deciding, o: Offer) -> tuple[float | None, str]:
    p = plan.price(o)
    refusal = plan.blocked.get(o.pool)
    if refusal is not None:
        return p, describe(refusal, plan.now)
    if p is None:
        return None, "no spot price known"
    if o.spot and p > o.bid:
        return p, f"spot price above max ${o.bid:.4f}/h"
    return p, ""


def _launch(spec: EndpointSpec, plan: Deciding, items: list[Item], live: int, budget: Budget,
            last_seq: int) -> list[Launch]:
    limits = [("max_machines", spec.max_machines - live),
              ("max_starts_per_cycle", spec.max_starts_per_cycle)]
    if budget.machines is not None:
        limits.append(("the controller's max machines", budget.machines - live))
    spend_caps = [("max_spend_per_hour", spec.max_spend_per_hour),
                  ("the controller's max spend per hour", budget.spend_per_hour)]
    open_offers = []
    for o in spec.offers:
        p, why = _available(plan, o)
        if p is not None and not why:
            open_offers.append((o, p))
    launches: list[Launch] = []
    seq = last_seq
    capped = ""
    while any(it.n > 0 for it in items):
        scored: list[tuple[float, int, str, Offer, float, list[tuple[Item, int]]]] = []
        for o, p in open_offers:
            taken = _fill(o, items)
            cores = sum(it.cores * k for it, k in taken)
            if not cores:
                continue
            # price per used core-hour over the machine's life: it runs as long as its
            # longest job, so short jobs beside a long one do not make it full for long
            life = max(it.runtime for it, _ in taken)
            work = sum(it.cores * k * it.runtime for it, k in taken)
            share = (plan.pool_cores.get(o.pool, 0) + o.cores) / (plan.fleet_cores + o.cores)
            scored.append((p * life / work * (1 + spec.diversity * share)
                           + _delay_cost(spec, plan, o, cores, work, p, life), o.cores,
                           o.pool, o, p, taken))
        if not scored:
            break
        # the smallest machine within `size_tolerance` of the best price per used core: a
        # big machine strands cores as its jobs end at different times
        low = min(x[0] for x in scored) * (1 + spec.size_tolerance)
        best = min((x for x in scored if x[0] <= low), key=lambda x: (x[1], x[0], x[2]))
        o, p, taken = best[3], best[4], best[5]
        copies = min(it.n // k for it, k in taken)
        copies = max(1, math.ceil(copies / BATCH_SHARE)) if spec.diversity else copies
        room = min(n for _, n in limits) - len(launches)
        for what, cap in spend_caps:
            if cap is not None:
                fit = math.floor((cap - plan.spend) / p + 1e-9) if p > 0 else copies
                if fit < copies:
                    copies, capped = max(fit, 0), what
        if room < copies:
            copies = max(room, 0)
            capped = next(what for what, n in limits if n - len(launches) == room)
        if copies <= 0:
            break
        used = sum(it.cores * k for it, k in taken)
        what = ", ".join(f"{k} of {it.label}" + (f" ({it.rung})" if it.rung else "")
                         for it, k in taken)
        reason = (f"{o.machine_type} {o.market} in {o.zone} at ${p:.4f}/h: "
                  f"${p / used:.4f} per used core-hour, holds {what}")
        delivered = plan.delivery.get(o.pool)
        if delivered is not None and spec.wait_cost:
            reason += f"; {delivered.describe(spec.boot_timeout)}"
        for _ in range(copies):
            seq += 1
            launches.append(Launch(machine_name(spec.name, seq), o.pool, o.machine_type,
                                   o.zone, o.market, p, o.cores, o.memory_mb, o.n_slots,
                                   reason))
            plan.add(o.pool, o.cores, p)
        for it, k in taken:
            it.n -= k * copies
        if capped:
            break
    if capped:
        plan.reasons.append(f"starting {len(launches)}: capped by {capped}")
    elif launches:
        plan.reasons.append(f"starting {len(launches)} for the waiting work")
    return launches


def _delay_cost(spec: EndpointSpec, plan: Deciding, o: Offer, cores: int, work: float,
                price: float = 0.0, life: float = 0.0) -> float:
    """What the expected delay and failures of a new machine of this offer cost, per used
    core-hour of the `work` (core-seconds) it holds (domain/delivery.py):

    - its delay to a working pilot keeps the `cores` of waiting work it would hold waiting:
      `wait_cost` per core-hour of waiting;
    - interruptions (measured per machine-hour) during its `life` (seconds): each one costs
      its jobs the work done so far (half its life, expected), run again at its `price`, and
      waiting for that work again plus a new machine's delay, at `wait_cost`."""
    if not spec.wait_cost or work <= 0:
        return 0.0
    delay = plan.delays.get(o.pool, 0.0)
    cost = spec.wait_cost * cores * delay / work
    d = plan.delivery.get(o.pool)
    rate = d.interruption_rate if d is not None else 0.0
    if rate and life > 0:
        n = rate * life / 3600  # interruptions expected in its life
        lost = life / 2  # seconds of its jobs' work lost at each
        cost += n * (price * lost / work + spec.wait_cost * cores * (delay + lost) / work)
    return cost


def _delays(spec: EndpointSpec, plan: Deciding, kept: Sequence[MachineView],
            now: float) -> dict[str, float]:
    """Each offer's expected delay (seconds) from a launch to a working pilot: what its
    launches took lately (`delivery`), and its machines still booting for longer than that
    count as taking at least as long as they have so far. An offer with neither is taken to
    be quick (so that it gets tried, and measured)."""
    if not spec.wait_cost:
        return {}
    ages: dict[str, list[float]] = {}
    for m in kept:
        if m.state in (M.BOOTING, M.REQUESTED) and m.pool:
            ages.setdefault(m.pool, []).append(now - m.created_at)
    out = {}
    for pool in set(plan.delivery) | set(ages):
        d = plan.delivery.get(pool) or Delivery(pool, 0, 0.0, 0)
        slow = [a for a in ages.get(pool, ()) if a > d.boot_mean]
        if slow:
            n = d.registered + len(slow)
            d = replace(d, registered=n,
                        boot_mean=(d.boot_mean * d.registered + sum(slow)) / n)
        out[pool] = d.expected_delay(spec.boot_timeout)
    return out


def _candidates(spec: EndpointSpec, plan: Deciding, started: Sequence[Launch]) -> tuple[
        Candidate, ...]:
    counts: dict[str, int] = {}
    for launch in started:
        counts[launch.pool] = counts.get(launch.pool, 0) + 1
    out = []
    for o in spec.offers:
        p, why = _available(plan, o)
        n = counts.get(o.pool, 0)
        status = why or (f"started {n}" if n else "not needed or not the cheapest fit")
        out.append(Candidate(o.pool, p, o.bid if o.spot else o.on_demand_price, o.cores,
                             o.memory_mb, None if p is None else p / o.cores, n, status))
    out.sort(key=lambda c: (c.per_core_hour is None, c.per_core_hour or 0.0, c.pool))
    return tuple(out)
