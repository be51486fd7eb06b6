"""The full LCG-2005 trace (188,041 jobs) through the simulator with real eu-west-1 spot
prices and the c5 family (examples/simulate-c5.toml).

    .venv/bin/python -m bench.simulate [--policy cloudpilot] [--all] [--limit N]
        [--trace PATH] [--prices PATH]

Prints the replay's wall time (aim for the cloudpilot policy: under 2 minutes on 2 cores),
its cost against the lower bound (aim: at most 1.3x) and its p95 wait (aim: under the boot
time plus 10 minutes). The data is read from ../shared/data beside the repository."""

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
TRACE = DATA / "traces" / "LCG-2005-1.swf.gz"
PRICES = DATA / "spot-prices" / "aws-spot-eu-west-1_2022-03-09_2022-06-07.tsv.xz"
CONFIG = ROOT / "examples" / "simulate-c5.toml"
WALL_AIM, COST_AIM, WAIT_SLACK = 120.0, 1.3, 600.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="cloudpilot", choices=POLICIES)
    ap.add_argument("--all", action="store_true", help="every policy, side by side")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--prices", default=str(PRICES))
    ap.add_argument("--config", default=str(CONFIG))
    a = ap.parse_args()
    if not Path(a.trace).exists() or not Path(a.prices).exists():
        sys.exit(f"the trace and the price history are needed: {a.trace}, {a.prices}")
    cfg, ep = load_config(a.config)
    t = time.monotonic()
    trace = read_swf(a.trace, a.limit)
    series, _ = map_prices(read_history(a.prices, {x.name for x in ep.machine_types},
                                        cfg.product), cfg.price_start)
    loaded = time.monotonic() - t
    res = simulate(trace, series, cfg, ep, list(POLICIES) if a.all else [a.policy], sys.stderr)
    print(text_table(res.reports, res.lower_bound))
    print(f"loading: {loaded:.1f}s (trace {len(trace):,} jobs, {len(series)} price series)")
    for r in res.reports:
        wall = res.seconds[r.policy]
        ratio = r.vs_lower_bound or float("nan")
        wait_aim = cfg.boot_time + WAIT_SLACK
        print(f"{r.policy}: replay {wall:.1f}s (aim < {WALL_AIM:.0f}s: "
              f"{'met' if wall < WALL_AIM else 'missed'}); cost {ratio:.3f} x lower bound "
              f"(aim <= {COST_AIM}: {'met' if ratio <= COST_AIM else 'missed'}); p95 wait "
              f"{r.wait_p95:.0f}s (aim < {wait_aim:.0f}s: "
              f"{'met' if r.wait_p95 < wait_aim else 'missed'})")


if __name__ == "__main__":
    main()
