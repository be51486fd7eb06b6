"""Both workload traces (LCG-2005: 188,041 1-core grid jobs; CTC-SP2-1996: 77,222 multi-core
HPC jobs) through the simulator, with real eu-west-1 spot prices and the c5 family
(examples/simulate-c5.toml).

    .venv/bin/python -m bench.simulate [--all] [--policy cloudpilot ...] [--limit N]
        [--trace PATH] [--prices PATH]

--all replays every policy side by side (default: cloudpilot and the oracle, the same
scheduler told each job's true run time); --policy (repeatable) picks; --trace replays one
trace instead of both. For each it prints the table, then the aims: cost at most 1.25 x the
lower bound, p95 wait at most the boot time + 10 min, each not worse than before this work
(TODAY), and each replay under 60 s. Wall time counts other processes sharing the cores; the
CPU time beside it is this replay's own. The data is read from ../shared/data beside the
repository."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from controller.drivers.prices import read_history
from controller.simulate.policies import POLICIES
from controller.simulate.report import text_table
from controller.simulate.run import load_config, map_prices, simulate
from controller.simulate.trace import read_swf

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TRACES = (DATA / "traces" / "LCG-2005-1.swf.gz",
          DATA / "traces" / "CTC-SP2-1996-3.1-cln.swf.gz")
PRICES = DATA / "spot-prices" / "aws-spot-eu-west-1_2022-03-09_2022-06-07.tsv.xz"
CONFIG = ROOT / "examples" / "simulate-c5.toml"
WALL_AIM, COST_AIM, WAIT_SLACK = 60.0, 1.25, 600.0
# the cloudpilot policy before issue 23 (commit 9c3ea8f, measured with this command on the
# full traces): cost in USD, p95 wait in seconds (before issue 13, commit 4e81de3: LCG
# $9,294.40 and 45 s, CTC-SP2 $44,356.76 and 569 s)
TODAY = {"LCG-2005-1": (8095.87, 10.0), "CTC-SP2-1996-3.1-cln": (40891.22, 390.0)}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def bench(trace_path: Path, a: argparse.Namespace) -> None:
    cfg, ep = load_config(a.config)
    t = time.monotonic()
    trace = read_swf(trace_path, a.limit)
    series, _ = map_prices(read_history(a.prices, {x.name for x in ep.machine_types},
                                        cfg.product), cfg.price_start)
    loaded = time.monotonic() - t
    name = trace_path.name.removesuffix(".gz").removesuffix(".swf")
    print(f"== {name}: {len(trace):,} jobs (loaded in {loaded:.1f}s with {len(series)} price "
          "series)")
    res = simulate(trace, series, cfg, ep,
                   list(POLICIES) if a.all else a.policy or ["cloudpilot", "oracle"],
                   sys.stderr)
    print(text_table(res.reports, res.lower_bound))
    today = TODAY.get(name) if a.limit is None else None
    for r in res.reports:
        wall, cpu = res.seconds[r.policy], res.cpu_seconds[r.policy]
        ratio = r.vs_lower_bound or float("nan")
        wait_aim = cfg.boot_time + WAIT_SLACK
        line = (f"{r.policy}: replay {wall:.1f}s wall, {cpu:.1f}s CPU (aim < {WALL_AIM:.0f}s: "
                f"{verdict(cpu < WALL_AIM)}); cost {ratio:.3f} x lower bound (aim <= "
                f"{COST_AIM}: {verdict(ratio <= COST_AIM)}); p95 wait {r.wait_p95:.0f}s (aim "
                f"<= {wait_aim:.0f}s: {verdict(r.wait_p95 <= wait_aim)})")
        if today is not None and r.policy == "cloudpilot":
            before = today[0] / res.lower_bound.cost
            line += (f"; before: ${today[0]:,.2f} = {before:.3f} x, p95 {today[1]:.0f}s (not "
                     f"worse: {verdict(r.cost <= today[0] and r.wait_p95 <= today[1])})")
        print(line)
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="append", choices=POLICIES)
    ap.add_argument("--all", action="store_true", help="every policy, side by side")
    ap.add_argument("--limit", type=int, help="only the first N jobs of each trace")
    ap.add_argument("--trace", help="one trace instead of both")
    ap.add_argument("--prices", default=str(PRICES))
    ap.add_argument("--config", default=str(CONFIG))
    a = ap.parse_args()
    traces = [Path(a.trace)] if a.trace else list(TRACES)
    missing = [str(p) for p in [*traces, Path(a.prices)] if not p.exists()]
    if missing:
        sys.exit(f"the traces and the price history are needed: {', '.join(missing)}")
    for path in traces:
        bench(path, a)


if __name__ == "__main__":
    main()
