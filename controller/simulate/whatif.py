"""`cloudpilot whatif` (issue 25): the controller's own recorded jobs over a window (their
submission times, requirements, owners and groups, real run times, and the spot prices its
ticks saw) replayed through the simulator twice, with the settings in force and with other
settings, side by side; and the replay of the settings in force against what really
happened (cost and machine-hours), its error, so that the comparison can be trusted.

The store is a trace source beside SWF files (controller/simulate/trace.py: both give
TraceJobs). One endpoint is replayed (the simulator's fleet is one endpoint's): by default the
one that ran the most of the window's jobs; the jobs that ran elsewhere are left out. An
endpoint without machine types (local processes, a fixed price) is one on-demand offer of its
own shape at its cost_per_hour."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from controller.config.settings import EndpointConfig, Settings
from controller.domain.pricing import Offer, PriceSeries
from controller.domain.scheduling import EndpointSpec
from controller.errors import InvalidInput
from controller.simulate.engine import Outcome, SimOptions, Simulation
from controller.simulate.report import (
    LowerBound,
    PolicyReport,
    lower_bound,
    percentile,
    summarize,
)
from controller.simulate.report import _dur as _dur  # the simulator's own durations
from controller.simulate.trace import from_store
from controller.store import Store, accounting, views


@dataclass(frozen=True)
class GroupWaits:
    jobs: int
    p50: float
    p95: float
    max: float


@dataclass(frozen=True)
class Side:
    """One replay: the report's figures, the waits per group, the jobs that could not run
    (no offered machine holds them, or never started)."""

    label: str
    report: PolicyReport
    waits: dict[str, GroupWaits]
    not_run: int
    machines_over_time: list[tuple[float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class WhatIf:
    endpoint: str
    since: float
    until: float
    jobs: int  # replayed
    left_out: int  # submitted in the window but not replayed (never ran, or ran elsewhere)
    boot_time: float  # the mean measured boot time the replays use (s)
    lower_bound: LowerBound
    current: Side
    other: Side
    real_cost: float  # USD: the endpoint's machines started in the window, their whole lives
    real_machine_hours: float
    seconds: float  # how long the two replays took
    notes: list[str] = field(default_factory=list)

    def error(self) -> tuple[float | None, float | None]:
        """The replay of the settings in force against what happened: relative error of its
        cost and of its machine-hours (None: nothing really happened to compare with)."""
        r = self.current.report
        return (_rel(r.cost, self.real_cost), _rel(r.machine_hours, self.real_machine_hours))

    def to_dict(self) -> dict[str, Any]:
        cost, mh = self.error()
        return {**asdict(self), "error": {"cost": cost, "machine_hours": mh}}


def _rel(sim: float, real: float) -> float | None:
    return None if real <= 0 else (sim - real) / real


def sim_spec(ep: EndpointConfig) -> EndpointSpec:
    """The endpoint as the simulator runs it: its machine types' offers, or one on-demand
    offer of its own shape at its cost_per_hour (0: free, as local processes are)."""
    spec = ep.spec()
    if spec.offers:
        return spec
    return replace(spec, offers=(Offer(ep.name, "local", "on-demand", ep.cores, ep.memory_mb,
                                       ep.machine_cost_per_hour() or 0.0, None, ep.slots),))


def price_series(seen: Sequence[tuple[float, dict[str, float]]], since: float
                 ) -> dict[str, PriceSeries]:
    """The spot prices the ticks saw, as step functions of the replay's time (0 = `since`,
    the first job's submission)."""
    times: dict[str, list[float]] = {}
    prices: dict[str, list[float]] = {}
    for at, ps in seen:
        for key, p in ps.items():
            if not prices.get(key) or prices[key][-1] != p:
                times.setdefault(key, []).append(at - since)
                prices.setdefault(key, []).append(p)
    return {k: PriceSeries(tuple(times[k]), tuple(prices[k])) for k in times}


def _side(label: str, out: Outcome, lb: LowerBound) -> Side:
    by: dict[str, list[float]] = {}
    for j in out.jobs:
        if j.starts:
            by.setdefault(j.trace.group, []).append(j.starts[0] - j.trace.submit)
    waits = {g: GroupWaits(len(w), percentile(w, 50), percentile(w, 95), max(w))
             for g, w in sorted(by.items())}
    not_run = len(out.unfit) + sum(1 for j in out.jobs if j.end is None)
    machines = [(s.t, sum(s.machines.values())) for s in out.samples]
    return Side(label, summarize(out, "", lb), waits, not_run, machines)


MAX_TICKS = 10_000  # the replay decides at most this often over its window (see _tick)
MAX_TICK = 60.0  # s: ... but at least once a minute


def sim_tick(loop_interval: float, span: float) -> float:
    """How often the replay decides: as often as the loop did (loop_interval), unless that
    makes more than MAX_TICKS decisions over the window: then evenly fewer, down to one a
    minute (the public traces' replays decide once a minute)."""
    return max(loop_interval, min(MAX_TICK, span / MAX_TICKS))


def _options(settings: Settings, store: Store, boot_time: float, span: float) -> SimOptions:
    return SimOptions(boot_time=boot_time, tick=sim_tick(settings.loop_interval, span),
                      shares=store.tokens.shares(), group_shares=dict(settings.group_shares),
                      fair_share_by=settings.fair_share_by,
                      half_life=settings.fair_share_half_life,
                      sample_every=max(settings.loop_interval, 60.0), run_out=True,
                      give_up=max(span, 600.0))


def whatif(store: Store, current: Settings, other: Settings, since: float, until: float,
           endpoint: str | None = None, now: float | None = None) -> WhatIf:
    """Replay [since, until)'s recorded jobs with the settings in force and with `other`."""
    now = time.time() if now is None else now
    if until <= since:
        raise InvalidInput("the window is empty: --until must be after --since")
    recorded = accounting.recorded_jobs(store, since, until)
    if endpoint is None:
        counts: dict[str, int] = {}
        for r in recorded:
            if r.endpoint:
                counts[r.endpoint] = counts.get(r.endpoint, 0) + 1
        endpoint = max(counts, key=lambda e: (counts[e], e)) if counts else (
            current.endpoints[0].name if current.endpoints else None)
    ep_now = current.endpoint(endpoint) if endpoint else None
    ep_other = other.endpoint(endpoint) if endpoint else None
    if endpoint is None or ep_now is None or ep_other is None:
        raise InvalidInput(f"endpoint {endpoint!r} is not in both configs")
    # the replay's time 0: the first job's submission (not the window's start: no idle ticks)
    t0 = min((r.submitted for r in recorded), default=since)
    trace, left_out = from_store(recorded, t0, endpoint)
    notes = []
    boots = [s for e, s in views.machine_boots_since(store, 0).boots if e == endpoint]
    boot_time = sum(boots) / len(boots) if boots else 120.0
    if not boots:
        notes.append("no boot of this endpoint recorded: a boot time of 120 s assumed")
    series = price_series(store.ticks.prices_seen(endpoint, since, until), t0)
    span = max((j.submit + j.run for j in trace), default=0.0)  # the jobs' own
    sides, lb = [], None
    started = time.monotonic()
    for label, settings, ep in (("in force", current, ep_now), ("other", other, ep_other)):
        spec = sim_spec(ep)
        priced = tuple(o for o in spec.offers if not o.spot or o.price_key in series)
        if len(priced) < len(spec.offers):
            notes.append(f"{label}: {len(spec.offers) - len(priced)} spot offer(s) with no "
                         "price the recorded ticks saw are left out")
        if not priced:
            raise InvalidInput(f"{label}: no offer of endpoint {endpoint} can be priced")
        spec = replace(spec, offers=priced)
        if lb is None:
            shapes: dict[tuple[int, int], float] = {}
            for j in trace:
                key = (j.cores, j.memory_mb if j.memory_mb > 0 else 1024)
                shapes[key] = shapes.get(key, 0.0) + j.cores * j.run / 3600
            horizon = max((j.submit + j.run for j in trace), default=0.0)
            lb = lower_bound(shapes, spec.offers, series, 0.0, horizon)
        opts = _options(settings, store, boot_time, span)
        out = Simulation(label, spec, trace, series, opts).run()
        sides.append(_side(label, out, lb))
    took = time.monotonic() - started
    assert lb is not None
    real = [m for m in accounting.machines(store, current.machine_prices(), since, until)
            if m.endpoint == endpoint and since <= m.started < until]
    real_s = sum((m.ended or now) - m.started for m in real)
    real_cost = sum((m.price or 0.0) * ((m.ended or now) - m.started) for m in real) / 3600
    return WhatIf(endpoint, since, until, len(trace), left_out, boot_time, lb, sides[0],
                  sides[1], real_cost, real_s / 3600, took, notes)


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:+.1%}"


def format_whatif(doc: dict[str, Any]) -> str:
    """The what-if side by side (from its JSON form: the API's answer)."""
    cur, oth = doc["current"], doc["other"]
    a, b = cur["report"], oth["report"]
    when = time.strftime
    lines = [f"what-if on endpoint {doc['endpoint']}: {doc['jobs']} jobs submitted "
             f"{when('%Y-%m-%d %H:%M', time.localtime(doc['since']))} - "
             f"{when('%Y-%m-%d %H:%M', time.localtime(doc['until']))} "
             f"({doc['left_out']} left out: never ran, or ran elsewhere); boot time "
             f"{doc['boot_time']:.1f}s as measured", ""]
    rows = [("", "settings in force", "other settings"),
            ("cost USD", f"{a['cost']:,.4f}", f"{b['cost']:,.4f}"),
            ("cost / lower bound", *("-" if r["vs_lower_bound"] is None
                                     else f"{r['vs_lower_bound']:.2f}" for r in (a, b))),
            ("machine-hours", f"{a['machine_hours']:,.3f}", f"{b['machine_hours']:,.3f}"),
            ("machines started", str(a["machines"]), str(b["machines"])),
            ("utilization", f"{a['utilization']:.1%}", f"{b['utilization']:.1%}"),
            ("jobs done", f"{a['jobs_done']}/{a['jobs_total']}",
             f"{b['jobs_done']}/{b['jobs_total']}"),
            ("jobs that could not run", str(cur["not_run"]), str(oth["not_run"]))]
    for g in sorted(set(cur["waits"]) | set(oth["waits"])):
        rows.append((f"wait p50/p95/max {g}", *(
            "-" if g not in s["waits"] else "/".join(
                _dur(s["waits"][g][k]) for k in ("p50", "p95", "max")) for s in (cur, oth))))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines += [f"  {r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}" for r in rows]
    lb = doc["lower_bound"]
    lines.append(f"lower bound: {lb['core_hours']:,.4f} core-hours x ${lb['per_core_hour']:.5f}"
                 f" per core-hour = ${lb['cost']:,.4f}")
    err = doc["error"]
    lines.append(f"the replay of the settings in force vs what happened: cost "
                 f"{a['cost']:,.4f} vs {doc['real_cost']:,.4f} USD ({_pct(err['cost'])}), "
                 f"machine-hours {a['machine_hours']:,.3f} vs {doc['real_machine_hours']:,.3f}"
                 f" ({_pct(err['machine_hours'])})")
    lines += [f"note: {n}" for n in doc["notes"]]
    lines.append(f"(replayed in {doc['seconds']:.2f}s)")
    return "\n".join(lines)
