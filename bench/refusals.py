"""When the cloud says no (issue 24): the cheapest spot pool sold out for 6 hours, replayed
through the simulator with the per-offer blocklist and without it (as before: a refusal
backs the endpoint off), beside the same replay with no refusal; then one zone whose
machines take an hour to boot, with offers scored by what they deliver and without.

    .venv/bin/python -m bench.refusals [--limit N] [--hours 6] [--slow-zone eu-west-1a]
        [--trace PATH] [--prices PATH] [--config PATH]

The pool sold out is the one the replay without refusals starts most machines in during
those hours (the cheapest, by the scheduler's own choice), from the trace's first second.
For each run it prints the cost, the p95 and the longest wait, the launches refused, and,
for the jobs submitted while the pool is sold out, how much longer each waited than in the
replay without the refusal (p95 and most) and how many waited longer by more than one tick
plus a boot. The aims (the issue's): at most 5 % dearer than without the refusal, and no job
waiting longer because of it than one tick plus a boot. The slow zone's runs print the same
columns against the replay where every machine boots in `boot_time`; the aim: the p95 wait
within the quick machines' boot plus 10 minutes. The data is read from ../shared/data
beside the repository (default: the LCG-2005 grid trace and eu-west-1 spot prices)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from controller.config.settings import EndpointConfig
from controller.domain.pricing import PriceSeries
from controller.drivers.prices import read_history
from controller.simulate.engine import Outcome
from controller.simulate.report import percentile
from controller.simulate.run import SimConfig, SoldOut, load_config, map_prices, simulate
from controller.simulate.trace import read_swf

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TRACE = DATA / "traces" / "LCG-2005-1.swf.gz"
PRICES = DATA / "spot-prices" / "aws-spot-eu-west-1_2022-03-09_2022-06-07.tsv.xz"
CONFIG = ROOT / "examples" / "simulate-c5.toml"
COST_AIM = 1.05


def waits(out: Outcome) -> dict[int, float]:
    return {j.trace.id: j.starts[0] - j.trace.submit for j in out.jobs if j.starts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N jobs")
    ap.add_argument("--hours", type=float, default=6.0, help="how long the pool is sold out")
    ap.add_argument("--slow-zone", default="eu-west-1a", help="the zone whose machines take "
                    "an hour to boot (the second and third parts)")
    ap.add_argument("--fast-zone", default="eu-west-1c", help="the third part's other "
                    "'endpoint': its machines boot in boot_time, at the slow zone's prices")
    ap.add_argument("--part", type=int, choices=(1, 2, 3), action="append",
                    help="only these parts (repeatable; default: all)")
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--prices", default=str(PRICES))
    ap.add_argument("--config", default=str(CONFIG))
    a = ap.parse_args()
    missing = [p for p in (a.trace, a.prices) if not Path(p).exists()]
    if missing:
        sys.exit(f"the trace and the price history are needed: {', '.join(missing)}")
    cfg, ep = load_config(a.config)
    trace = read_swf(a.trace, a.limit)
    series, _ = map_prices(read_history(a.prices, {x.name for x in ep.machine_types},
                                        cfg.product), cfg.price_start)
    window = a.hours * 3600

    def run(c: SimConfig, e: EndpointConfig = ep,
            prices: dict[str, PriceSeries] = series) -> tuple[Outcome, float, float]:
        t, cpu = time.monotonic(), time.process_time()
        res = simulate(trace, prices, c, e, ["cloudpilot"])
        out = res.outcomes[0]
        print(f"  (a replay: ${total(out):,.2f}, p95 wait "
              f"{percentile(list(waits(out).values()), 95):.0f}s, "
              f"{time.process_time() - cpu:.0f} CPU s)", file=sys.stderr, flush=True)
        return out, time.monotonic() - t, time.process_time() - cpu

    parts = set(a.part or (1, 2, 3))
    print(f"{Path(a.trace).name}: {len(trace):,} jobs; tick {cfg.tick:g}s, boot "
          f"{cfg.boot_time:g}s")
    if parts & {1, 2}:
        base, wall, cpu = run(cfg)
        if 1 in parts:
            sold_out(a, cfg, run, base, wall, cpu, window)
        if 2 in parts:
            slow_zone(a, cfg, ep, run, base)
    if 3 in parts:
        two_endpoints(a, cfg, ep, run, series)


Run = Callable[..., tuple[Outcome, float, float]]  # (config, endpoint, prices)


def sold_out(a: argparse.Namespace, cfg: SimConfig, run: Run, base: Outcome, wall: float,
             cpu: float, window: float) -> None:
    """The cheapest pool sold out for `window` seconds from the start, with the blocklist
    and without; and, for the per-job waits, the same replay without any refusal but with
    boot_time one second longer: how far two replays drift apart job by job by chance."""
    starts = Counter(m.offer.pool for m in base.machines if m.created < window)
    pool = starts.most_common(1)[0][0]
    sold = [SoldOut(pool=pool, start=0.0, end=window)]
    runs = [("no refusal", base, wall, cpu)]
    for label, c in (
            ("sold out, blocklist (issue 24)", cfg.model_copy(update={"refusals": sold})),
            ("sold out, back-off (before)",
             cfg.model_copy(update={"refusals": sold, "blocklist": False})),
            ("no refusal, boot +1 s (chance)",
             cfg.model_copy(update={"boot_time": cfg.boot_time + 1}))):
        out, wall, cpu = run(c)
        runs.append((label, out, wall, cpu))
    print(f"{pool} sold out for the first {a.hours:g} h (the replay without refusals started "
          f"{starts[pool]} of its {sum(starts.values())} machines of those hours there)")
    table(cfg, base, runs, early={j.trace.id for j in base.jobs if j.trace.submit < window})
    after = runs[1][1]
    ratio = total(after) / total(base)
    print(f"aim: cost at most {COST_AIM:g} x without the refusal: {ratio:.3f} "
          f"({'met' if ratio <= COST_AIM else 'MISSED'})")
    print()


def slow_zone(a: argparse.Namespace, cfg: SimConfig, ep: EndpointConfig, run: Run,
              base: Outcome) -> None:
    """One zone's machines take an hour to boot, with offers scored and not."""
    slow = {f"*/{a.slow_zone}/*": 3600.0}
    runs = [("every machine boots in boot_time", base, 0.0, 0.0)]
    for label, cost in (("slow zone, scored (issue 24)", ep.wait_cost),
                        ("slow zone, not scored (before)", 0.0)):
        out, wall, cpu = run(cfg.model_copy(update={"boot_times": slow}),
                             ep.model_copy(update={"wait_cost": cost}))
        runs.append((label, out, wall, cpu))
    print(f"{a.slow_zone}: its machines take 1 h to boot (boot_timeout "
          f"{ep.boot_timeout:g}s), the other zones' {cfg.boot_time:g}s")
    table(cfg, base, runs, early=set(waits(base)))
    p95 = percentile(list(waits(runs[1][1]).values()), 95)
    aim = cfg.boot_time + 600
    print(f"aim: p95 wait at most the quick boot + 10 min ({aim:g}s): {p95:.0f}s "
          f"({'met' if p95 <= aim else 'MISSED'})")
    print()


def two_endpoints(a: argparse.Namespace, cfg: SimConfig, ep: EndpointConfig, run: Run,
                  series: dict[str, PriceSeries]) -> None:
    """The issue's two endpoints at equal prices, one whose machines take an hour to boot
    and one two minutes: the simulator replays one endpoint, so they are two zones of it
    (the slow and the fast zone), the slow zone's spot prices replaced by the fast zone's,
    so that every offer of one has its twin at the same price in the other. Against the
    fast one alone: its zone only."""
    zones = [a.slow_zone, a.fast_zone]
    types = [t.model_copy(update={"zones": zones}) for t in ep.machine_types]
    twins = dict(series)
    for t in ep.machine_types:
        twin = series.get(f"{t.name}/{a.fast_zone}")
        if twin is not None:
            twins[f"{t.name}/{a.slow_zone}"] = twin
    both = ep.model_copy(update={"machine_types": types})
    alone = ep.model_copy(update={"machine_types": [
        t.model_copy(update={"zones": [a.fast_zone]}) for t in ep.machine_types]})
    slow = cfg.model_copy(update={"boot_times": {f"*/{a.slow_zone}/*": 3600.0}})

    fast, wall, cpu = run(cfg, alone, twins)
    runs = [(f"the fast one alone ({a.fast_zone})", fast, wall, cpu)]
    for label, cost in (("both, scored (issue 24)", both.wait_cost),
                        ("both, not scored (before)", 0.0)):
        out, wall, cpu = run(slow, both.model_copy(update={"wait_cost": cost}), twins)
        runs.append((label, out, wall, cpu))
    print(f"two endpoints at equal prices: {a.slow_zone} (machines boot in 1 h) and "
          f"{a.fast_zone} ({cfg.boot_time:g}s), the first's spot prices the second's")
    table(cfg, fast, runs, early=set(waits(fast)))
    p95 = percentile(list(waits(runs[1][1]).values()), 95)
    p95_fast = percentile(list(waits(fast).values()), 95)
    aim = p95_fast + cfg.boot_time + 600
    print(f"aim: p95 wait within the fast one's ({p95_fast:.0f}s) + boot + 10 min ({aim:.0f}s):"
          f" {p95:.0f}s ({'met' if p95 <= aim else 'MISSED'})")


def total(out: Outcome) -> float:
    return sum(out.cost(m) for m in out.machines)


def table(cfg: SimConfig, base: Outcome, runs: list[tuple[str, Outcome, float, float]],
          early: set[int]) -> None:
    """Each run's cost, waits and refusals, and the `early` jobs' waits beside `base`'s."""
    slack = cfg.tick + cfg.boot_time
    w0 = waits(base)
    print(f"{'run':34} {'cost':>10} {'x':>6} {'p95 wait':>9} {'max wait':>9} {'refused':>8}"
          f" {'extra p95':>9} {'extra max':>9} {'> tick+boot':>11} {'CPU s':>6}")
    cost0 = total(base)
    for label, out, _wall, cpu in runs:
        w = waits(out)
        cost = total(out)
        extra = [w[i] - w0[i] for i in early if i in w and i in w0]
        late = sum(1 for x in extra if x > slack)
        p95 = percentile(list(w.values()), 95)
        print(f"{label:34} ${cost:>9,.2f} {cost / cost0:6.3f} {p95:8.0f}s"
              f" {max(w.values(), default=0):8.0f}s {out.refused:8d}"
              f" {percentile(extra, 95):8.0f}s {max(extra, default=0):8.0f}s {late:11d}"
              f" {cpu:6.1f}")


if __name__ == "__main__":
    main()
