"""What a replay tells the operator: per policy cost, machine-hours, utilization, waits,
makespan, interruptions; the lower bound; as a text table and as JSON."""

from __future__ import annotations

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
        machines=len(out.machines), vs_lower_bound=ratio)


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


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
        if r.unfit:
            lines.append(f"{r.policy}: {r.unfit:,} jobs no offered machine can hold "
                         "(not run, not in the figures)")
    return "\n".join(lines)


def as_json(reports: list[PolicyReport], lb: LowerBound | None,
            extra: dict[str, object]) -> dict[str, object]:
    return {**extra, "lower_bound": None if lb is None else asdict(lb),
            "policies": [asdict(r) for r in reports]}
