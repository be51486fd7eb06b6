"""The fleet: machines, endpoints, task queues and an SSH endpoint's hosts."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import common
from controller.errors import CloudpilotError


def cmd_machines(args: argparse.Namespace) -> int:
    ms = common.client(args).machines(args.endpoint, args.all)
    rows = [[m["name"], m["endpoint"], m["state"], m["jobs"], common.when(m["created_at"]),
             common.when(m["last_seen"]), m["reason"]] for m in ms]
    print(common.table(rows, ["NAME", "ENDPOINT", "STATE", "JOBS", "CREATED", "SEEN", "REASON"]))
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    for e in common.client(args).endpoints():
        cfg = e["config"]
        ms = ", ".join(f"{n} {s}" for s, n in e["machines"].items()) or "no machines"
        print(f"{e['name']} ({e['driver']}): {e['state']} {e['message']}".rstrip())
        print(f"  machines: {ms}; max {cfg['max_machines']}, {cfg['slots']} slots of "
              f"{cfg['cores']} cores / {cfg['memory_mb']} MB, idle timeout {cfg['idle_timeout']}s")
        if e.get("work"):
            print(f"  working: {e['work']['what']} since {common.when(e['work']['since'])}")
        d = e.get("last_decision")
        if d:
            print(f"  last decision: demand {d['demand']} machines, start {d['start'] or '-'}, "
                  f"remove {[r['name'] for r in d['remove']] or '-'}")
            for r in d["reasons"]:
                print(f"    {r}")
        for ev in e.get("events") or []:
            print(f"  {common.when(ev['at'])} {ev['state']}: {ev['message']}")
    return 0


def cmd_taskqueues(args: argparse.Namespace) -> int:
    rows = [[q["id"], q["owner"], q["priority"], q["waiting"], q["requirements"]["cores"],
             q["requirements"]["memory_mb"], ",".join(q["requirements"]["tags"]),
             q["unmatchable"] or ""] for q in common.client(args).taskqueues()]
    print(common.table(rows, ["TQ", "OWNER", "PRIO", "WAITING", "CORES", "MB", "TAGS",
                              "UNMATCHABLE"]))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    c = common.client(args)
    if args.action == "join":
        if not args.name or not args.address:
            raise CloudpilotError("usage: cloudpilot hosts ENDPOINT join NAME ADDRESS "
                                  "[--port N] [--slots N] [--host-key LINE]")
        body: dict[str, Any] = {"name": args.name, "address": args.address, "port": args.port}
        if args.slots:
            body["slots"] = args.slots
        if args.host_key:
            body["host_key"] = args.host_key
        h = c.join_host(args.endpoint, **body)
        print(f"host {h['name']} ({h['address']}:{h['port']}) is {h['membership']}: it takes "
              f"work once it answers on SSH (machine {h['machine']})")
        return 0
    if args.action == "leave":
        if not args.name:
            raise CloudpilotError("usage: cloudpilot hosts ENDPOINT leave NAME")
        h = c.leave_host(args.endpoint, args.name)
        print(f"host {h['name']} left {args.endpoint}: its pilot is being stopped")
        return 0
    if args.action == "list":
        rows = []
        for h in c.hosts(args.endpoint):
            f = h["facts"] or {}
            offer = (f"{f.get('cores')}c/{f.get('memory_mb')}MB py{f.get('python')}"
                     if f else "-")
            rows.append([h["name"], f"{h['address']}:{h['port']}", h["membership"],
                         h["machine_state"] or "-", h["slots"] or "", h["jobs"], offer,
                         h["source"], h["last_error"] or h["reason"] or ""])
        print(common.table(rows, ["HOST", "ADDRESS", "MEMBERSHIP", "MACHINE", "SLOTS", "JOBS",
                            "OFFERS", "SOURCE", "REASON"]))
        print("\nrecent events:")
    for e in c.host_events(args.endpoint, args.name, args.limit):
        print(f"  {common.when(e['at'])}  {e['host']:<12} {e['event']:<14} {e['detail'] or ''}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("machines", help="list machines")
    common.client_opts(p)
    p.add_argument("--endpoint", help="only this endpoint")
    p.add_argument("--all", action="store_true", help="include stopped and lost machines")
    p.set_defaults(fn=cmd_machines)

    p = sub.add_parser("endpoints", help="list endpoints and their last scheduling decision")
    common.client_opts(p)
    p.set_defaults(fn=cmd_endpoints)

    p = sub.add_parser("taskqueues", help="list task queues with waiting jobs")
    common.client_opts(p)
    p.set_defaults(fn=cmd_taskqueues)

    p = sub.add_parser("hosts", help="hosts of an SSH endpoint: list, join, leave, events")
    common.client_opts(p)
    p.add_argument("endpoint", help="an ssh endpoint")
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "join", "leave", "events"],
                   help="list (default, with recent events), join NAME ADDRESS, leave NAME, "
                        "events [NAME]")
    p.add_argument("name", nargs="?", help="host name (join, leave, events)")
    p.add_argument("address", nargs="?", help="host address (join)")
    p.add_argument("--port", type=int, default=22, help="SSH port (join; 22)")
    p.add_argument("--slots", type=int, help="pilot slots (join; the endpoint's by default)")
    p.add_argument("--host-key", help="pin the host's key: a known_hosts line (join)")
    p.add_argument("--limit", type=int, default=20, help="events shown (20)")
    p.set_defaults(fn=cmd_hosts)
