"""`cloudpilot simulate`: read the config, the trace and the price history, replay each
policy, report. The config is a cloudpilot config (its first endpoint with machine types is
the simulated one) plus an optional `[simulate]` table (SimConfig)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.config.settings import PricedEndpointConfig, Settings, read_toml
from controller.domain.pricing import PriceSeries
from controller.drivers.prices import read_history, window
from controller.errors import ConfigError
from controller.simulate.engine import Outcome, SimOptions, Simulation
from controller.simulate.policies import POLICIES, make_policy
from controller.simulate.report import (
    LowerBound,
    PolicyReport,
    as_json,
    lower_bound,
    summarize,
    text_table,
)
from controller.simulate.trace import TraceJob, read_swf


class SoldOut(BaseModel):
    """One pool whose launches are refused from `start` to `end` (seconds of trace time)."""

    model_config = ConfigDict(extra="forbid")

    pool: str = Field(description="machine type / zone / market, e.g. c5.large/eu-west-1a/spot")
    start: float = Field(ge=0)
    end: float = Field(ge=0)


class SimConfig(BaseModel):
    """The `[simulate]` table."""

    model_config = ConfigDict(extra="forbid")

    boot_time: float = Field(120.0, ge=0, description="seconds from start to a working pilot")
    tick: float = Field(60.0, gt=0, description="seconds between scheduler decisions")
    job_memory_mb: int = Field(1024, ge=1, description="for jobs whose trace has none")
    price_start: str | None = Field(None, description="the history time the trace's start "
                                    "maps to (ISO 8601; default: the history's first)")
    product: str = "Linux/UNIX"
    policies: list[str] = Field(default_factory=lambda: list(POLICIES))
    # --- issue 24: when the cloud says no ------------------------------------------------
    refusals: list[SoldOut] = Field(default_factory=list, description="pools sold out for "
                                    "a while: their launches are refused")
    refusals_file: str | None = Field(None, description="more of them: a file of lines "
                                      "'pool start end' (seconds of trace time; # comments)")
    refusal_rate: float = Field(0.0, ge=0, le=1, description="every other launch is "
                                "refused with this probability")
    blocklist: bool = Field(True, description="false: a refusal backs the endpoint off, "
                            "as before issue 24 (for before/after figures)")
    boot_times: dict[str, float] = Field(default_factory=dict, description="pools (patterns "
                                         "like '*/eu-west-1a/*') whose machines take another "
                                         "boot time (seconds) than boot_time")

    def sold_out(self) -> tuple[tuple[str, float, float], ...]:
        out = [(r.pool, r.start, r.end) for r in self.refusals]
        if self.refusals_file:
            try:
                text = Path(self.refusals_file).read_text()
            except OSError as e:
                raise ConfigError(f"refusals_file: {e}") from None
            for n, line in enumerate(text.splitlines(), 1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                try:
                    pool, a, b = parts[0], float(parts[1]), float(parts[2])
                except (IndexError, ValueError):
                    raise ConfigError(f"{self.refusals_file}:{n}: write 'pool start end' "
                                      "(seconds)") from None
                out.append((pool, a, b))
        return tuple(out)


def load_config(path: str | Path) -> tuple[SimConfig, PricedEndpointConfig]:
    p = Path(path)
    data = read_toml(p)
    sim = data.pop("simulate", {})
    for ep in data.get("endpoints", []):  # prices come from --prices
        if isinstance(ep, dict):
            ep.setdefault("prices", {"source": "file", "path": "--prices"})
    try:
        cfg = SimConfig(**sim)
        settings = Settings(**data)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid configuration {p}:\n" + "\n".join(lines)) from None
    ep_cfg = next((e for e in settings.endpoints
                   if isinstance(e, PricedEndpointConfig) and e.machine_types), None)
    if ep_cfg is None:
        raise ConfigError(f"{p}: no endpoint with machine types to simulate")
    return cfg, ep_cfg


@dataclass
class Result:
    reports: list[PolicyReport]
    lower_bound: LowerBound
    outcomes: list[Outcome]
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU time


def map_prices(series: dict[str, PriceSeries], start: str | None) -> tuple[
        dict[str, PriceSeries], float]:
    """Shift the histories so that the trace's time 0 is `start` (default: the history's
    first moment). After the history's end its last prices hold."""
    first, last = window(series)
    t0 = first
    if start is not None:
        try:
            t0 = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ConfigError(f"price_start {start!r} is not an ISO 8601 time") from None
        if not first <= t0 < last:
            raise ConfigError(f"price_start {start} is outside the history's window")
    return {k: s.shifted(-t0) for k, s in series.items()}, t0


class Progress:
    """A one-line progress bar on stderr (virtual time and jobs done)."""

    def __init__(self, policy: str, horizon: float, total: int, stream: TextIO) -> None:
        self.policy, self.horizon, self.total, self.stream = policy, horizon, total, stream
        self.last = 0.0

    def __call__(self, now: float, done: int, final: bool = False) -> None:
        wall = time.monotonic()
        if not final and wall - self.last < 0.5:
            return
        self.last = wall
        frac = min(done / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.policy:>18} [{bar:<30}] {frac:6.1%}  day {now / 86400:5.1f}"
                          f"  {done:,}/{self.total:,} jobs")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def simulate(trace: list[TraceJob], series: dict[str, PriceSeries], cfg: SimConfig,
             ep: PricedEndpointConfig, policies: list[str] | None = None,
             progress: TextIO | None = None) -> Result:
    spec = ep.spec()
    types = {o.price_key for o in spec.offers if o.spot}
    missing = sorted(types - set(series))
    series = {k: s for k, s in series.items() if k in types}
    if not series and any(o.spot for o in spec.offers):
        raise ConfigError("the price history has none of the offered spot types and zones")
    opts = SimOptions(boot_time=cfg.boot_time, tick=cfg.tick, job_memory_mb=cfg.job_memory_mb,
                      refusals=cfg.sold_out(), refusal_rate=cfg.refusal_rate,
                      blocklist=cfg.blocklist, refusal_ttl=ep.refusal_ttl,
                      refusal_ttl_max=ep.refusal_ttl_max,
                      boot_times=tuple(cfg.boot_times.items()))
    horizon = max((j.submit + j.run for j in trace), default=0.0)
    outcomes, reports, seconds, cpu_seconds = [], [], {}, {}
    probe = Simulation("probe", spec, trace, series, opts)  # which jobs fit at all
    shapes: dict[tuple[int, int], float] = {}
    for j in probe.trace:
        key = (j.cores, j.memory_mb)
        shapes[key] = shapes.get(key, 0.0) + j.cores * j.trace.run / 3600
    lb = lower_bound(shapes, spec.offers, series, 0.0, horizon)
    for name in policies or cfg.policies:
        try:
            pol = make_policy(name, spec, trace, series)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        bar: Callable[[float, int], None] | None = None
        if progress is not None:
            bar = Progress(name, horizon, len(probe.trace), progress)
        started, cpu = time.monotonic(), time.process_time()
        out = Simulation(name, pol.spec, trace, series, opts, pol.static, bar,
                         pol.runtimes).run()
        seconds[name] = time.monotonic() - started
        cpu_seconds[name] = time.process_time() - cpu
        if isinstance(bar, Progress):
            bar(out.end, sum(1 for j in out.jobs if j.end is not None), final=True)
        outcomes.append(out)
        reports.append(summarize(out, pol.note, lb))
    info = {"jobs": len(trace), "offers": len(spec.offers), "missing_prices": missing,
            "boot_time": cfg.boot_time, "tick": cfg.tick}
    return Result(reports, lb, outcomes, seconds, info, cpu_seconds)


def main(args: Any) -> int:
    """The `cloudpilot simulate` command."""
    cfg, ep = load_config(args.config)
    policies = [args.policy] if args.policy else None
    if args.policy and args.policy not in POLICIES:
        raise ConfigError(f"unknown policy {args.policy!r}; one of {', '.join(POLICIES)}")
    t = time.monotonic()
    trace = read_swf(args.trace, args.limit)
    types = {t.name for t in ep.machine_types}
    raw = read_history(args.prices, types, cfg.product)
    series, t0 = map_prices(raw, cfg.price_start)
    loaded = time.monotonic() - t
    stream = None if args.no_progress else sys.stderr
    res = simulate(trace, series, cfg, ep, policies, stream)
    print(text_table(res.reports, res.lower_bound))
    print(f"({len(trace):,} jobs; trace time 0 = {datetime.fromtimestamp(t0).isoformat()} in "
          f"the price history; loaded in {loaded:.1f}s; replayed in "
          + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items()) + ")")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = as_json(res.reports, res.lower_bound, {**res.info, "seconds": res.seconds,
                                                  "trace": str(args.trace),
                                                  "prices": str(args.prices)})
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    print(f"JSON: {out / 'report.json'}")
    if not args.no_plots:
        from controller.simulate.plots import plot

        for path in plot(res.outcomes, out):
            print(f"plot: {path}")
    return 0
