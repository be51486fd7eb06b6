"""Plans: each endpoint's proposed and applied changes; approve, up and down."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import common


def _change(p: dict[str, Any]) -> str:
    return " ".join(x for x in (f"+{len(p['create'])}" if p["create"] else "",
                                f"-{len(p['delete'])}" if p["delete"] else "") if x)


def cmd_plans(args: argparse.Namespace) -> int:
    rows = [[p["id"], p["endpoint"], p["state"], _change(p), p["asked_by"],
             common.when(p["updated_at"]), p["message"]]
            for p in common.client(args).plans(endpoint=args.endpoint, state=args.state,
                                         limit=args.limit)]
    print(common.table(rows, ["ID", "ENDPOINT", "STATE", "CHANGE", "ASKED BY", "UPDATED",
                              "MESSAGE"]))
    return 0


def print_plan(p: dict[str, Any]) -> None:
    """A plan as an operator reads it: what changes, why, what the driver will do."""
    print(f"plan {p['id']} for endpoint {p['endpoint']}: {p['state']} (asked by "
          f"{p['asked_by']} at {common.when(p['created_at'])})")
    if p["approved_by"]:
        print(f"  approved by {p['approved_by']}")
    if p["message"]:
        print(f"  {p['message']}")
    why = {r.split(": ", 1)[0]: r.split(": ", 1)[1] for r in p["reasons"] if ": " in r}
    print("change:")
    for n in p["create"]:
        spec = p.get("specs", {}).get(n)
        where = f" ({spec['type']} {spec['market']} in {spec['zone']}, {spec['price']:g}/h)" \
            if spec and {"type", "market", "zone", "price"} <= set(spec) else ""
        print(f"  + {n}   {why.get(n, 'new machine')}{where}")
    for n in p["delete"]:
        print(f"  - {n}   {why.get(n, 'not wanted')}")
    rest = ", ".join(p["wanted"][:8]) + (" ..." if len(p["wanted"]) > 8 else "")
    print(f"after it: {len(p['wanted'])} machine(s)" + (f" ({rest})" if rest else ""))
    if p["cost_per_hour"]:
        print(f"adds about {p['cost_per_hour']:g} per hour")
    named = set(p["create"]) | set(p["delete"])
    general = [r for r in p["reasons"] if r.split(": ", 1)[0] not in named]
    if general:
        print("why:")
        for r in general:
            print(f"  {r}")
    if p["detail"]:
        print("the driver's view:")
        for line in p["detail"].splitlines():
            print(f"  {line}")
    if p.get("engine_plan"):
        print("  (Pulumi's saved plan: approving it applies exactly this, with `up --plan`)")
    if p.get("events"):
        print("history:")
        for e in p["events"]:
            print(f"  {common.when(e['at'])}  {e['from_state'] or '-':>8} -> {e['to_state']:<10} "
                  f"{e['reason'] or ''}")


def cmd_plan(args: argparse.Namespace) -> int:
    c = common.client(args)
    if args.plan_cmd == "approve":
        p = c.approve(args.id)
        print(f"plan {p['id']} approved: the controller applies it at its next tick "
              f"({_change(p) or 'no change'} on {p['endpoint']})")
        return 0
    print_plan(c.plan(args.id))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    out = common.client(args).up(args.endpoint)
    print(f"{args.endpoint}: {out['message']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    out = common.client(args).down(args.endpoint)
    dropped = ", ".join(map(str, out["superseded"]))
    print(f"{args.endpoint}: down; {out['message']}"
          + (f" (open plans superseded: {dropped})" if dropped else ""))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plans", help="list plans: each endpoint's proposed and applied changes")
    common.client_opts(p)
    p.add_argument("--endpoint", help="only this endpoint")
    p.add_argument("--state", choices=["open", "pending", "approved", "applied", "failed",
                                       "superseded"], help="only plans in this state "
                   "(open: pending or approved)")
    p.add_argument("--limit", type=int, default=50, help="at most this many, newest first (50)")
    p.set_defaults(fn=cmd_plans)

    p = sub.add_parser("plan", help="show or approve one plan")
    psub = p.add_subparsers(dest="plan_cmd", required=True, metavar="PLAN_COMMAND")
    q = psub.add_parser("show", help="the plan's change, reasons, driver's view and history")
    common.client_opts(q)
    q.add_argument("id", type=int, help="plan id")
    q = psub.add_parser("approve", help="approve a pending plan (admin); the loop applies it")
    common.client_opts(q)
    q.add_argument("id", type=int, help="plan id")
    p.set_defaults(fn=cmd_plan)

    common.endpoint_command(sub, "up", "apply an endpoint's wanted state now (ends a `down`; "
                            "admin)", cmd_up)
    common.endpoint_command(sub, "down", "remove all of an endpoint's machines and start none "
                            "until `up` (admin)", cmd_down)
