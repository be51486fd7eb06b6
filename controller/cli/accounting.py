"""Who used what: fair shares and accounting."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import common


def cmd_shares(args: argparse.Namespace) -> int:
    out = common.client(args).shares()
    rows = [[s["kind"], s["name"], s["group"] or "", f"{s['share']:g}",
             f"{s['usage_core_hours']:.2f}", f"{s['held_cores']:g}", f"{s['load']:.4f}",
             s["rank"]] for s in out["shares"]]
    print(f"fair share by {out['by']}; usage decays with a half-life of "
          f"{out['half_life'] / 3600:g} h; the lowest load is served first")
    print(common.table(rows, ["KIND", "NAME", "GROUP", "SHARE", "USED CORE-H", "HELD CORES",
                        "LOAD", "RANK"]))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    out = common.client(args).usage(args.by, args.since)

    def part(r: dict[str, Any], status: str) -> str:
        a = r["by_status"].get(status)
        return f"{a['attempts']} / {a['core_hours']:.2f}" if a else "-"

    rows = [[r["day"], r["name"], r["total"]["attempts"], f"{r['total']['core_hours']:.2f}",
             f"{r['total']['money']:.2f}", part(r, "failed"), part(r, "interrupted")]
            for r in out["rows"]]
    rows += [[i["day"], f"{i['endpoint']} (idle)", "", "", f"{i['money']:.2f}", "", ""]
             for i in out["idle"]]
    print(common.table(rows, ["DAY", args.by.upper(), "ATTEMPTS", "CORE-H", "USD",
                        "FAILED N / CORE-H", "INTERRUPTED N / CORE-H"]))
    if out["spent"]:
        print("spent in the window: " + ", ".join(
            f"{e} {v:.2f} USD" for e, v in sorted(out["spent"].items())))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shares", help="fair share: each group's and owner's share, recent "
                       "usage, cores held and effective priority")
    common.client_opts(p)
    p.set_defaults(fn=cmd_shares)

    p = sub.add_parser("usage", help="accounting: core-hours and money by day per owner, "
                       "group or endpoint (idle machine time charged to its endpoint)")
    common.client_opts(p)
    p.add_argument("--by", choices=["owner", "group", "endpoint"], default="owner",
                   help="one row a day per owner (default), group or endpoint")
    p.add_argument("--since", default="30d", help="the window back from now (30d, 12h, 90m)")
    p.set_defaults(fn=cmd_usage)
