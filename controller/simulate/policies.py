"""The policies compared side by side. Each is the same scheduler with another endpoint spec
(or, for on-demand-static, no scheduler at all: a fixed fleet)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from controller.domain.pricing import Offer, PriceSeries
from controller.domain.scheduling import EndpointSpec
from controller.simulate.trace import TraceJob

POLICIES = ("on-demand-static", "on-demand-elastic", "spot-naive", "cloudpilot", "oracle")


@dataclass(frozen=True)
class Policy:
    name: str
    spec: EndpointSpec
    static: tuple[Offer, int] | None = None
    note: str = ""
    runtimes: str = "predicted"  # what it is told of run times (engine.RUNTIMES)


def mean_cores(jobs: list[TraceJob]) -> float:
    """The trace's mean load in cores: its core-seconds over its span."""
    if not jobs:
        return 0.0
    start = min(j.submit for j in jobs)
    end = max(j.submit + j.run for j in jobs)
    return sum(j.cores * j.run for j in jobs) / max(end - start, 1.0)


def _per_core(o: Offer, series: dict[str, PriceSeries], t: float) -> float:
    if o.spot:
        s = series.get(o.price_key)
        return math.inf if s is None else s.at(t) / o.cores
    return o.on_demand_price / o.cores


def make_policy(name: str, spec: EndpointSpec, jobs: list[TraceJob],
                series: dict[str, PriceSeries]) -> Policy:
    on_demand = tuple(o for o in spec.offers if not o.spot)
    spot = tuple(o for o in spec.offers if o.spot)
    if name == "cloudpilot":
        return Policy(name, spec, note=f"all {len(spec.offers)} offers, diversity "
                      f"{spec.diversity}")
    if name == "oracle":
        return Policy(name, spec, note="cloudpilot told each job's true run time (what "
                      "better prediction could give at most)", runtimes="oracle")
    if name == "on-demand-elastic":
        return Policy(name, replace(spec, offers=on_demand), note="the scheduler, on-demand "
                      "offers only")
    if name == "spot-naive":
        best = min(spot, key=lambda o: (_per_core(o, series, 0.0), o.pool))
        return Policy(name, replace(spec, offers=(best,), diversity=0.0),
                      note=f"the cheapest spot pool at the start only: {best.pool}")
    if name == "on-demand-static":
        best = min(on_demand, key=lambda o: (_per_core(o, series, 0.0), o.pool))
        n = max(1, math.ceil(mean_cores(jobs) / best.cores))
        return Policy(name, replace(spec, offers=(best,)), static=(best, n),
                      note=f"{n} x {best.machine_type} on demand for the mean load, "
                      "all the time")
    raise ValueError(f"unknown policy {name!r}; one of {', '.join(POLICIES)}")
