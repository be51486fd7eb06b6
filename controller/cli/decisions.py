"""The scheduler's decisions: explain the last one, replay a recorded tick, what a window of
recorded jobs would have cost with other settings, simulate a trace."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from controller.cli import common
from controller.errors import ConfigError


def cmd_explain(args: argparse.Namespace) -> int:
    from controller.reconcile.whatif import format_explain

    print(format_explain(common.client(args).explain(args.endpoint)))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from controller.reconcile.whatif import replay

    c = common.client(args)
    if args.tick is None:
        rows = [[t["id"], t["endpoint"], common.when(t["at"]), t["starts"], t["removes"]]
                for t in c.ticks(args.endpoint, changes=True)]
        print(common.table(rows, ["TICK", "ENDPOINT", "AT", "STARTS", "REMOVES"]))
        return 0
    print(replay(c.tick(args.tick), args.config))
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from controller.simulate.whatif import format_whatif

    try:
        text = Path(args.config).read_text()
    except OSError as e:
        raise ConfigError(f"--config: {e}") from None
    out = common.client(args).whatif(args.since, args.until, text, args.endpoint)
    print(json.dumps(out, indent=2) if args.json else format_whatif(out))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from controller.simulate.run import main as simulate

    return simulate(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common.endpoint_command(sub, "explain", "an endpoint's last scheduler decision: inputs, "
                            "candidate machine types with prices, why each machine started or "
                            "stopped", cmd_explain)

    p = sub.add_parser("replay", help="re-run a recorded scheduler tick, with the same or "
                       "another config, and show what would be decided differently")
    common.client_opts(p)
    p.add_argument("--tick", type=int, help="tick id (without: list recent ticks that "
                   "started or removed machines)")
    p.add_argument("--config", help="another config (TOML) to decide with; default: the "
                   "recorded one")
    p.add_argument("--endpoint", help="with no --tick: only this endpoint's ticks")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("whatif", help="what would it have cost? replay the jobs recorded in a "
                       "window with the settings in force and with another config, side by "
                       "side (admin)")
    common.client_opts(p)
    p.add_argument("--since", default="7d", help="the window's start: back from now (7d, "
                   "12h) or an ISO 8601 time (7d)")
    p.add_argument("--until", help="its end, the same way (default: now)")
    p.add_argument("--config", required=True, help="the other settings: a cloudpilot config "
                   "(TOML)")
    p.add_argument("--endpoint", help="the endpoint replayed (default: the one that ran the "
                   "most of the window's jobs)")
    p.add_argument("--json", action="store_true", help="the answer as JSON")
    p.set_defaults(fn=cmd_whatif)

    p = sub.add_parser("simulate", help="replay a workload trace through the scheduler, "
                       "policy by policy, with real spot prices")
    p.add_argument("--trace", required=True, help="SWF workload trace (.swf or .swf.gz)")
    p.add_argument("--prices", required=True, help="spot price history TSV (.tsv or .tsv.xz)")
    p.add_argument("--config", required=True, help="TOML: an endpoint with machine types, "
                   "and a [simulate] table (see examples/simulate-c5.toml)")
    p.add_argument("--policy", help="only this policy (on-demand-static, on-demand-elastic, "
                   "spot-naive, cloudpilot, oracle); default: all side by side")
    p.add_argument("--limit", type=int, help="only the first N jobs of the trace")
    p.add_argument("--out", default="simulate-out", help="folder for report.json and the "
                   "plots (simulate-out)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_simulate)
