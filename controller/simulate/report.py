"""What a replay tells the operator: per policy cost, machine-hours, utilization, waits,
makespan, interruptions; the lower bound; where the money above the bound goes (the gap,
decomposed) and where the waits come from (by job width and by cause); as a text table and
as JSON."""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

from controller.domain.pricing import Offer, PriceSeries
from controller.simulate.engine import Outcome


@dataclass(frozen=True)
class LowerBound:
    """Every job's core-hours at the cheapest time-averaged price per core among the offered
    machine types that can hold it (cores and memory), perfectly packed with no idle time.
    `pool` is the pool that bounds the most core-hours; `per_core_hour` the mean."""

    core_hours: float
    pool: str
    per_core_hour: float
    cost: float
    by_pool: dict[str, float] = field(default_factory=dict)  # core-hours each pool bounds


@dataclass(frozen=True)
class PolicyReport:
    policy: str
    note: str
    cost: float
    machine_hours: float
    utilization: float
    jobs_done: int
    jobs_total: int
    unfit: int
    wait_mean: float
    wait_p50: float
    wait_p95: float
    makespan: float
    interruptions: int
    rescheduled: int
    machines: int
    vs_lower_bound: float | None
    gap: dict[str, float] = field(default_factory=dict)  # GAP_PARTS -> USD above the bound
    waits: list[WaitRow] = field(default_factory=list)  # by job width


# Where the cost above the lower bound goes, each machine's cost split by how its life was
# spent (its mean price per second times the seconds):
GAP_PARTS = {
    "boot": "booting (no pilot yet)",
    "idle": "up with no job (waiting for work or for the idle timeout)",
    "stranded": "free cores of machines running jobs",
    "lost": "runs cut short by spot interruptions (run again)",
    "price": "the jobs' core-hours above the bound's price (types or times dearer than the "
             "cheapest time-averaged one)",
}
# job widths, in cores (the last one: up to any width)
WIDTHS = ((1, 1), (2, 8), (9, 32), (33, 96), (97, 1 << 30))
# why a job waited: for a machine to boot, for room on running machines (reservation,
# backfill, fair share), or for a decision that left work uncovered: a cap (max_machines,
# max_starts_per_cycle), a budget (max spend per hour), or no open offer that holds it
# (spot prices above max_price_factor, offers blocked after refusals); jobs no type holds
# are counted apart (unfit)
CAUSES = ("boot", "room", "cap", "budget", "price")


@dataclass(frozen=True)
class WaitRow:
    """The waits of jobs of `cores` (lo, hi): count, mean, p95, seconds by cause."""

    lo: int
    hi: int
    jobs: int
    mean: float
    p95: float
    by_cause: dict[str, float]


def gap(out: Outcome, lb_cost: float) -> dict[str, float]:
    """The cost above the lower bound, in USD, by GAP_PARTS: sums to cost - lb_cost."""
    parts = dict.fromkeys(GAP_PARTS, 0.0)
    total = 0.0
    for m in out.machines:
        end = m.ended if m.ended is not None else out.end
        life = end - m.created
        cost = out.cost(m)
        total += cost
        if life <= 0:
            continue
        rate = cost / life  # USD per second
        up = m.up_at if m.up_at is not None else end
        boot = min(up, end) - m.created
        cores = m.offer.cores
        parts["boot"] += rate * boot
        parts["idle"] += rate * max(life - boot - m.busy_s, 0.0)
        parts["stranded"] += rate * (m.busy_s - m.used_core_s / cores)
        parts["lost"] += rate * m.lost_core_s / cores
    # what is left is the price of the jobs' own core-hours above the bound's
    parts["price"] = total - lb_cost - sum(parts.values())
    return parts


def waits_by_width(out: Outcome) -> list[WaitRow]:
    """Each finished job's first wait, by width, split by cause: 'boot' for the boot of the
    machine it started on when that was started after it arrived; its wait before that (or
    all of it, on a machine that was up) goes to the cause of the last decision in it that
    left work uncovered ('cap', 'budget', 'price'), else to 'boot' (the next tick) or 'room'
    (on a machine that was up)."""
    starts = {m.name: m.created for m in out.machines}
    ticks, causes = out.short_ticks, out.short_causes
    rows = []
    for lo, hi in WIDTHS:
        waits, by = [], dict.fromkeys(CAUSES, 0.0)
        for j in out.jobs:
            if j.end is None or not lo <= j.cores <= hi:
                continue
            w = j.starts[0] - j.trace.submit
            waits.append(w)
            if w <= 0:
                continue
            # a machine started for it: its boot, and what held the start back before that
            started = starts[j.first_machine] if j.first_machine is not None else -math.inf
            until, other = (started, "boot") if started > j.trace.submit else (
                j.starts[0], "room")
            by["boot"] += j.starts[0] - until
            last = bisect.bisect_right(ticks, until)
            if bisect.bisect_left(ticks, j.trace.submit) < last:
                by[causes[last - 1]] += until - j.trace.submit
            else:
                by[other] += until - j.trace.submit
        if waits:
            rows.append(WaitRow(lo, hi, len(waits), sum(waits) / len(waits),
                                percentile(waits, 95), by))
    return rows


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def lower_bound(shapes: dict[tuple[int, int], float], offers: tuple[Offer, ...],
                series: dict[str, PriceSeries], t0: float, t1: float) -> LowerBound:
    """`shapes`: core-hours by (cores, memory MB) of the jobs."""
    per: list[tuple[float, str, Offer]] = []
    for o in offers:
        if o.spot:
            s = series.get(o.price_key)
            if s is None:
                continue
            per.append((s.mean(t0, t1) / o.cores, o.pool, o))
        else:
            per.append((o.on_demand_price / o.cores, o.pool, o))
    per.sort(key=lambda x: (x[0], x[1]))
    core_hours = sum(shapes.values())
    cost, by_pool = 0.0, dict[str, float]()
    for (cores, mem), ch in shapes.items():
        best = next(((p, pool) for p, pool, o in per
                     if o.cores >= cores and o.memory_mb >= mem), None)
        if best is None:
            return LowerBound(core_hours, "-", math.nan, math.nan)
        cost += ch * best[0]
        by_pool[best[1]] = by_pool.get(best[1], 0.0) + ch
    if not by_pool:
        return LowerBound(core_hours, "-", math.nan, math.nan)
    main = max(by_pool, key=lambda k: (by_pool[k], k))
    return LowerBound(core_hours, main, cost / core_hours if core_hours else 0.0, cost,
                      by_pool)


def summarize(out: Outcome, note: str, lb: LowerBound | None) -> PolicyReport:
    done = [j for j in out.jobs if j.end is not None]
    waits = [j.starts[0] - j.trace.submit for j in done]
    cost = sum(out.cost(m) for m in out.machines)
    machine_s = core_s = 0.0
    for m in out.machines:
        life = (m.ended if m.ended is not None else out.end) - m.created
        machine_s += life
        core_s += life * m.offer.cores
    busy = sum(j.cores * j.trace.run for j in done)
    first = min((j.trace.submit for j in out.jobs), default=0.0)
    last = max((j.end for j in done if j.end is not None), default=first)
    ratio = cost / lb.cost if lb is not None and lb.cost > 0 else None
    return PolicyReport(
        policy=out.policy, note=note, cost=cost, machine_hours=machine_s / 3600,
        utilization=busy / core_s if core_s else 0.0, jobs_done=len(done),
        jobs_total=len(out.jobs), unfit=len(out.unfit),
        wait_mean=sum(waits) / len(waits) if waits else 0.0,
        wait_p50=percentile(waits, 50), wait_p95=percentile(waits, 95),
        makespan=last - first, interruptions=out.interruptions, rescheduled=out.rescheduled,
        machines=len(out.machines), vs_lower_bound=ratio,
        gap=gap(out, lb.cost) if lb is not None and lb.cost > 0 else {},
        waits=waits_by_width(out))


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _width(w: WaitRow) -> str:
    if w.lo == w.hi:
        return str(w.lo)
    return f"{w.lo}+" if w.hi >= 1 << 30 else f"{w.lo}-{w.hi}"


def _share(v: float, of: dict[str, float]) -> str:
    total = sum(of.values())
    return f"{v / total:.0%}" if total > 0 else "-"


def text_table(reports: list[PolicyReport], lb: LowerBound | None) -> str:
    head = ["policy", "cost USD", "x LB", "machine-h", "util", "jobs done", "unfit",
            "wait mean", "p50", "p95", "makespan", "interrupt", "resched", "machines"]
    rows = [head]
    for r in reports:
        rows.append([
            r.policy, f"{r.cost:,.2f}",
            "-" if r.vs_lower_bound is None else f"{r.vs_lower_bound:.2f}",
            f"{r.machine_hours:,.0f}", f"{r.utilization:.1%}",
            f"{r.jobs_done:,}/{r.jobs_total:,}", f"{r.unfit:,}", _dur(r.wait_mean),
            _dur(r.wait_p50), _dur(r.wait_p95), _dur(r.makespan), f"{r.interruptions:,}",
            f"{r.rescheduled:,}", f"{r.machines:,}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    if lb is not None:
        where = lb.pool if len(lb.by_pool) <= 1 else (
            ", ".join(f"{p} {ch / lb.core_hours:.0%}" for p, ch in
                      sorted(lb.by_pool.items(), key=lambda x: -x[1])[:4]))
        lines.append(f"lower bound: {lb.core_hours:,.0f} core-hours x ${lb.per_core_hour:.5f} "
                     f"per core-hour (each job on the cheapest type that holds it, "
                     f"time-averaged: {where}) = ${lb.cost:,.2f}")
    for r in reports:
        if r.note:
            lines.append(f"{r.policy}: {r.note}")
        if r.gap:
            lines.append(f"{r.policy}: ${sum(r.gap.values()):,.2f} above the bound: "
                         + ", ".join(f"{k} ${v:,.2f} ({_share(v, r.gap)})"
                                     for k, v in r.gap.items()))
        if r.waits:
            lines.append(f"{r.policy}: waits by width (jobs, mean, p95; share of the waiting "
                         "by cause " + "/".join(CAUSES) + "): " + "; ".join(
                             f"{_width(w)} cores {w.jobs:,} {_dur(w.mean)} {_dur(w.p95)} "
                             + "/".join(_share(w.by_cause[c], w.by_cause) for c in CAUSES)
                             for w in r.waits))
        if r.unfit:
            lines.append(f"{r.policy}: {r.unfit:,} jobs no offered machine can hold "
                         "(not run, not in the figures)")
    return "\n".join(lines)


def as_json(reports: list[PolicyReport], lb: LowerBound | None,
            extra: dict[str, object]) -> dict[str, object]:
    return {**extra, "lower_bound": None if lb is None else asdict(lb),
            "policies": [asdict(r) for r in reports]}
