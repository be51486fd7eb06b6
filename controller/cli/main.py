"""The `cloudpilot` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from controller.cli.client import ApiClient, ApiError
from controller.config.database import redact
from controller.config.settings import Settings
from controller.errors import CloudpilotError, ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("CLOUDPILOT_CONFIG")
    return Settings.load(path)


def _client(args: argparse.Namespace) -> ApiClient:
    token = args.token or os.environ.get("CLOUDPILOT_TOKEN")
    if not token:
        raise CloudpilotError("no token: pass --token or set CLOUDPILOT_TOKEN "
                              "(make one with `cloudpilot admin create-token`)")
    return ApiClient(args.url or os.environ.get("CLOUDPILOT_URL", DEFAULT_URL), token)


def _when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cells = [head] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


# commands ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from controller import logs
    from controller.app import serve
    from controller.store import Store

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    path = args.config or os.environ.get("CLOUDPILOT_CONFIG")
    settings = Settings.load(path, **overrides)
    # a bad path or an unreachable server: one line (StorageError), no traceback; the schema
    # is migrated here, once, before any worker starts
    Store(settings.database).close()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs.setup(settings.log_format)
    db = redact(str(settings.database))
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    print(f"cloudpilot controller on {settings.url} (database {db}{workers}, "
          f"endpoints {', '.join(e.name for e in settings.endpoints) or 'none'})", flush=True)
    serve(settings)
    return 0


def load_job_file(path: str) -> list[dict[str, Any]]:
    """A JSON list (or {"jobs": [...]}) or a TOML file of [[jobs]] tables."""
    text = Path(path).read_text()
    try:
        data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise CloudpilotError(f"{path} is not valid: {e}") from None
    jobs = data.get("jobs") if isinstance(data, dict) else data
    if not isinstance(jobs, list) or not jobs:
        raise CloudpilotError(f"{path} holds no jobs (a list, or a 'jobs' list)")
    return jobs


def cmd_submit(args: argparse.Namespace) -> int:
    if args.file:
        if args.command:
            raise CloudpilotError("give a command or --file, not both")
        jobs = load_job_file(args.file)
    else:
        cmd = [c for c in args.command if c != "--"]
        if not cmd:
            raise CloudpilotError("nothing to run: cloudpilot submit [options] -- COMMAND ARGS")
        req: dict[str, Any] = {"cores": args.cores, "memory_mb": args.memory,
                               "max_runtime": args.max_runtime, "tags": args.tag or [],
                               "endpoints": args.endpoint or [],
                               "banned_endpoints": args.ban_endpoint or []}
        if args.platform:
            req["platforms"] = args.platform
        env = dict(e.split("=", 1) for e in args.env or [])
        inputs = [{"name": Path(p).name, "content": Path(p).read_text()} for p in args.input or []]
        inputs += [{"name": Path(p).name, "sandbox": _client(args).upload_sandbox(p)}
                   for p in args.sandbox or []]
        jobs = [{"executable": cmd[0], "arguments": cmd[1:], "requirements": req,
                 "priority": args.priority, "name": args.name or "", "env": env,
                 "inputs": inputs, "outputs": args.output or []}] * args.count
    out = _client(args).submit(jobs)
    ids = out["ids"]
    print(f"submitted {len(ids)} job(s): " + (
        ", ".join(map(str, ids)) if len(ids) <= 20 else f"{ids[0]}..{ids[-1]}"))
    for jid, why in out.get("unmatchable", {}).items():
        print(f"  job {jid} waits: {why}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = _client(args).jobs(state=args.state, owner=args.owner, endpoint=args.endpoint,
                              limit=args.limit)
    rows = [[j["id"], j["owner"], j["state"], j["executable"], j["machine"], j["exit_code"],
             j["waiting_reason"] or j["reason"] or ""] for j in jobs]
    print(_table(rows, ["ID", "OWNER", "STATE", "EXECUTABLE", "MACHINE", "EXIT", "REASON"]))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.get_output:
        paths = c.download(args.id, args.get_output, args.attempt)
        for p in paths:
            print(p)
        print(f"{len(paths)} files of job {args.id} in {args.get_output} (SHA-256 checked)")
        return 0
    if args.follow:
        from controller.cli.live import follow_job

        return follow_job(c, args.id)
    j = c.job(args.id)
    print(f"job {j['id']} {j['name'] or ''}".rstrip())
    for k in ("state", "owner", "group", "executable", "arguments", "priority", "machine",
              "endpoint", "exit_code", "reason", "waiting_reason", "retries", "progress"):
        if j.get(k) not in (None, "", []):
            print(f"  {k:15} {j[k]}")
    print(f"  {'requirements':15} {json.dumps(j['requirements'])}")
    print("events:")
    for e in c.events(args.id):
        print(f"  {_when(e['at'])}  {e['from_state'] or '-':>11} -> {e['to_state']:<11} "
              f"{e['reason'] or ''}")
    try:
        out = c.output(args.id)
        print("stdout:" + (" (tail)" if out["truncated"] else ""))
        print(out["stdout"].rstrip() or "  (empty)")
        if out["stderr"]:
            print("stderr:")
            print(out["stderr"].rstrip())
    except ApiError as e:
        if e.status != 404:
            raise
        print("output: none yet")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from controller.cli.live import watch

    return watch(_client(args), plain=True if args.plain else None, once=args.once,
                 interval=args.interval)


def cmd_kill(args: argparse.Namespace) -> int:
    c = _client(args)
    rc = 0
    for jid in args.ids:
        try:
            j = c.kill(jid)
            print(f"job {jid}: {j['state']}")
        except ApiError as e:
            print(f"job {jid}: {e.detail}", file=sys.stderr)
            rc = 1
    return rc


def cmd_machines(args: argparse.Namespace) -> int:
    ms = _client(args).machines(args.endpoint, args.all)
    rows = [[m["name"], m["endpoint"], m["state"], m["jobs"], _when(m["created_at"]),
             _when(m["last_seen"]), m["reason"]] for m in ms]
    print(_table(rows, ["NAME", "ENDPOINT", "STATE", "JOBS", "CREATED", "SEEN", "REASON"]))
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    for e in _client(args).endpoints():
        cfg = e["config"]
        ms = ", ".join(f"{n} {s}" for s, n in e["machines"].items()) or "no machines"
        print(f"{e['name']} ({e['driver']}): {e['state']} {e['message']}".rstrip())
        print(f"  machines: {ms}; max {cfg['max_machines']}, {cfg['slots']} slots of "
              f"{cfg['cores']} cores / {cfg['memory_mb']} MB, idle timeout {cfg['idle_timeout']}s")
        if e.get("work"):
            print(f"  working: {e['work']['what']} since {_when(e['work']['since'])}")
        d = e.get("last_decision")
        if d:
            print(f"  last decision: demand {d['demand']} machines, start {d['start'] or '-'}, "
                  f"remove {[r['name'] for r in d['remove']] or '-'}")
            for r in d["reasons"]:
                print(f"    {r}")
        for ev in e.get("events") or []:
            print(f"  {_when(ev['at'])} {ev['state']}: {ev['message']}")
    return 0


def cmd_taskqueues(args: argparse.Namespace) -> int:
    rows = [[q["id"], q["owner"], q["priority"], q["waiting"], q["requirements"]["cores"],
             q["requirements"]["memory_mb"], ",".join(q["requirements"]["tags"]),
             q["unmatchable"] or ""] for q in _client(args).taskqueues()]
    print(_table(rows, ["TQ", "OWNER", "PRIO", "WAITING", "CORES", "MB", "TAGS", "UNMATCHABLE"]))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    out = _client(args).usage(args.by, args.since)

    def part(r: dict[str, Any], status: str) -> str:
        a = r["by_status"].get(status)
        return f"{a['attempts']} / {a['core_hours']:.2f}" if a else "-"

    rows = [[r["day"], r["name"], r["total"]["attempts"], f"{r['total']['core_hours']:.2f}",
             f"{r['total']['money']:.2f}", part(r, "failed"), part(r, "interrupted")]
            for r in out["rows"]]
    rows += [[i["day"], f"{i['endpoint']} (idle)", "", "", f"{i['money']:.2f}", "", ""]
             for i in out["idle"]]
    print(_table(rows, ["DAY", args.by.upper(), "ATTEMPTS", "CORE-H", "USD",
                        "FAILED N / CORE-H", "INTERRUPTED N / CORE-H"]))
    if out["spent"]:
        print("spent in the window: " + ", ".join(
            f"{e} {v:.2f} USD" for e, v in sorted(out["spent"].items())))
    return 0


def cmd_shares(args: argparse.Namespace) -> int:
    out = _client(args).shares()
    rows = [[s["kind"], s["name"], s["group"] or "", f"{s['share']:g}",
             f"{s['usage_core_hours']:.2f}", f"{s['held_cores']:g}", f"{s['load']:.4f}",
             s["rank"]] for s in out["shares"]]
    print(f"fair share by {out['by']}; usage decays with a half-life of "
          f"{out['half_life'] / 3600:g} h; the lowest load is served first")
    print(_table(rows, ["KIND", "NAME", "GROUP", "SHARE", "USED CORE-H", "HELD CORES",
                        "LOAD", "RANK"]))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    c = _client(args)
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
        print(_table(rows, ["HOST", "ADDRESS", "MEMBERSHIP", "MACHINE", "SLOTS", "JOBS",
                            "OFFERS", "SOURCE", "REASON"]))
        print("\nrecent events:")
    for e in c.host_events(args.endpoint, args.name, args.limit):
        print(f"  {_when(e['at'])}  {e['host']:<12} {e['event']:<14} {e['detail'] or ''}")
    return 0


def _change(p: dict[str, Any]) -> str:
    return " ".join(x for x in (f"+{len(p['create'])}" if p["create"] else "",
                                f"-{len(p['delete'])}" if p["delete"] else "") if x)


def cmd_plans(args: argparse.Namespace) -> int:
    rows = [[p["id"], p["endpoint"], p["state"], _change(p), p["asked_by"],
             _when(p["updated_at"]), p["message"]]
            for p in _client(args).plans(endpoint=args.endpoint, state=args.state,
                                         limit=args.limit)]
    print(_table(rows, ["ID", "ENDPOINT", "STATE", "CHANGE", "ASKED BY", "UPDATED", "MESSAGE"]))
    return 0


def print_plan(p: dict[str, Any]) -> None:
    """A plan as an operator reads it: what changes, why, what the driver will do."""
    print(f"plan {p['id']} for endpoint {p['endpoint']}: {p['state']} (asked by "
          f"{p['asked_by']} at {_when(p['created_at'])})")
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
            print(f"  {_when(e['at'])}  {e['from_state'] or '-':>8} -> {e['to_state']:<10} "
                  f"{e['reason'] or ''}")


def cmd_plan(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.plan_cmd == "approve":
        p = c.approve(args.id)
        print(f"plan {p['id']} approved: the controller applies it at its next tick "
              f"({_change(p) or 'no change'} on {p['endpoint']})")
        return 0
    print_plan(c.plan(args.id))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    out = _client(args).up(args.endpoint)
    print(f"{args.endpoint}: {out['message']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    out = _client(args).down(args.endpoint)
    dropped = ", ".join(map(str, out["superseded"]))
    print(f"{args.endpoint}: down; {out['message']}"
          + (f" (open plans superseded: {dropped})" if dropped else ""))
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from controller.auth import Role
    from controller.services import backups
    from controller.store import Store

    # backups (issue 26): before anything opens the database (a restore makes it)
    if args.admin_cmd == "backup":
        pages = backups.backup(str(_settings(args).database), Path(args.path))
        print(f"backed up to {args.path} ({pages} pages)")
        return 0
    if args.admin_cmd == "restore":
        ids = backups.restore(str(_settings(args).database),
                              Path(args.path) if args.path else None,
                              after_pg_restore=args.after_pg_restore)
        print(f"restored; {len(ids)} jobs held at the backup's time rescheduled as interrupted")
        return 0
    store = Store(_settings(args).database)
    try:
        if args.admin_cmd == "create-user":
            store.tokens.create_user(args.name, args.group, args.share)
            print(f"user {args.name} (group {args.group}, share {args.share}) created")
        elif args.admin_cmd == "create-token":
            if args.user:
                tok = store.tokens.issue(Role.USER, owner=args.user, lifetime=args.lifetime,
                                         note=args.note)
            elif args.pilot:
                tok = store.tokens.issue(Role.PILOT, endpoint=args.pilot,
                                         lifetime=args.lifetime, note=args.note)
            else:
                role = Role.METRICS if args.metrics else Role.ADMIN
                tok = store.tokens.issue(role, lifetime=args.lifetime, note=args.note)
            print(tok)
        elif args.admin_cmd == "users":
            print(_table([[u["name"], u["group"], u["share"]] for u in store.tokens.users()],
                         ["NAME", "GROUP", "SHARE"]))
        elif args.admin_cmd == "tokens":
            rows = [[t["id"], t["role"], t["owner"] or t["endpoint"] or "",
                     _when(t["created_at"]), _when(t["expires_at"]), t["note"]]  # type: ignore[arg-type]
                    for t in store.tokens.find()]
            print(_table(rows, ["ID", "ROLE", "FOR", "CREATED", "EXPIRES", "NOTE"]))
        elif args.admin_cmd == "revoke":
            store.tokens.revoke(args.id)
            print(f"token {args.id} revoked")
    finally:
        store.close()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from controller.reconcile.whatif import format_explain

    print(format_explain(_client(args).explain(args.endpoint)))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from controller.reconcile.whatif import replay

    c = _client(args)
    if args.tick is None:
        rows = [[t["id"], t["endpoint"], _when(t["at"]), t["starts"], t["removes"]]
                for t in c.ticks(args.endpoint, changes=True)]
        print(_table(rows, ["TICK", "ENDPOINT", "AT", "STARTS", "REMOVES"]))
        return 0
    print(replay(c.tick(args.tick), args.config))
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from controller.simulate.whatif import format_whatif

    try:
        text = Path(args.config).read_text()
    except OSError as e:
        raise ConfigError(f"--config: {e}") from None
    out = _client(args).whatif(args.since, args.until, text, args.endpoint)
    print(json.dumps(out, indent=2) if args.json else format_whatif(out))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from controller.simulate.run import main as simulate

    return simulate(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.cli.demo import run_demo

    return run_demo(keep=args.keep, stay=args.stay)


# the parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cloudpilot", description=(
        "cloudpilot: a job queue that grows and shrinks its own fleet of machines."))
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help=f"controller URL (env CLOUDPILOT_URL; {DEFAULT_URL})")
        p.add_argument("--token", help="bearer token (env CLOUDPILOT_TOKEN)")

    def config_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config file (env CLOUDPILOT_CONFIG; "
                       "none: the embedded default with one local endpoint)")

    p = sub.add_parser("serve", help="run the controller (API + scheduler loop)")
    config_opt(p)
    p.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default from config: 8080)")
    p.add_argument("--workers", type=int, help="controller processes on this machine "
                   "(default from config: 1; more than one needs a postgresql:// database)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("submit", help="submit a command, or a JSON/TOML file of jobs")
    client_opts(p)
    p.add_argument("--file", "-f", help="JSON list or TOML [[jobs]] of job descriptions")
    p.add_argument("--cores", type=int, default=1, help="cores the job needs (1)")
    p.add_argument("--memory", type=int, default=512, help="memory in MB (512)")
    p.add_argument("--max-runtime", type=int, default=3600, help="seconds (3600)")
    p.add_argument("--tag", action="append", help="required machine tag (repeatable)")
    p.add_argument("--platform", action="append",
                   help="a platform the job runs on, e.g. el9 (repeatable: any of them)")
    p.add_argument("--endpoint", action="append", help="allowed endpoint (repeatable)")
    p.add_argument("--ban-endpoint", action="append", help="banned endpoint (repeatable)")
    p.add_argument("--priority", type=int, default=0, help="priority among your jobs (0)")
    p.add_argument("--env", action="append", help="KEY=VALUE for the job (repeatable)")
    p.add_argument("--input", action="append", help="a small text file to send (repeatable)")
    p.add_argument("--sandbox", action="append", metavar="FILE",
                   help="a file to send as an input sandbox: stored once, whatever the "
                   "number of jobs naming it (repeatable)")
    p.add_argument("--output", action="append", metavar="PATTERN",
                   help="a file to keep when the job ends: a name or glob in its directory "
                   "(repeatable; `cloudpilot job ID --get-output DIR` fetches them)")
    p.add_argument("--name", help="a name for the job")
    p.add_argument("--count", type=int, default=1, help="submit this many copies (1)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("jobs", help="list jobs")
    client_opts(p)
    p.add_argument("--state", help="filter by state")
    p.add_argument("--owner", help="filter by owner (admins)")
    p.add_argument("--endpoint", help="filter by endpoint")
    p.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("job", help="one job: state, events and output")
    client_opts(p)
    p.add_argument("id", type=int, help="job id")
    p.add_argument("--follow", "-f", action="store_true",
                   help="print its events as they happen, then its output, until it ends "
                   "(exit status 0 if it ended done)")
    p.add_argument("--get-output", metavar="DIR",
                   help="download its output files into DIR (each checked by SHA-256)")
    p.add_argument("--attempt", type=int, help="with --get-output: that attempt's files "
                   "(default: the newest of each)")
    p.set_defaults(fn=cmd_job)

    p = sub.add_parser("watch", help="a live view: jobs by state, machines by endpoint, spend")
    client_opts(p)
    p.add_argument("--plain", action="store_true",
                   help="one plain line per change (the default when not on a terminal)")
    p.add_argument("--once", action="store_true", help="print once and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (2)")
    p.set_defaults(fn=cmd_watch)

    p = sub.add_parser("kill", help="kill jobs")
    client_opts(p)
    p.add_argument("ids", type=int, nargs="+", help="job ids")
    p.set_defaults(fn=cmd_kill)

    p = sub.add_parser("machines", help="list machines")
    client_opts(p)
    p.add_argument("--endpoint", help="only this endpoint")
    p.add_argument("--all", action="store_true", help="include stopped and lost machines")
    p.set_defaults(fn=cmd_machines)

    p = sub.add_parser("endpoints", help="list endpoints and their last scheduling decision")
    client_opts(p)
    p.set_defaults(fn=cmd_endpoints)

    p = sub.add_parser("taskqueues", help="list task queues with waiting jobs")
    client_opts(p)
    p.set_defaults(fn=cmd_taskqueues)

    p = sub.add_parser("shares", help="fair share: each group's and owner's share, recent "
                       "usage, cores held and effective priority")
    client_opts(p)
    p.set_defaults(fn=cmd_shares)

    p = sub.add_parser("usage", help="accounting: core-hours and money by day per owner, "
                       "group or endpoint (idle machine time charged to its endpoint)")
    client_opts(p)
    p.add_argument("--by", choices=["owner", "group", "endpoint"], default="owner",
                   help="one row a day per owner (default), group or endpoint")
    p.add_argument("--since", default="30d", help="the window back from now (30d, 12h, 90m)")
    p.set_defaults(fn=cmd_usage)

    p = sub.add_parser("hosts", help="hosts of an SSH endpoint: list, join, leave, events")
    client_opts(p)
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

    p = sub.add_parser("plans", help="list plans: each endpoint's proposed and applied changes")
    client_opts(p)
    p.add_argument("--endpoint", help="only this endpoint")
    p.add_argument("--state", choices=["open", "pending", "approved", "applied", "failed",
                                       "superseded"], help="only plans in this state "
                   "(open: pending or approved)")
    p.add_argument("--limit", type=int, default=50, help="at most this many, newest first (50)")
    p.set_defaults(fn=cmd_plans)

    p = sub.add_parser("plan", help="show or approve one plan")
    psub = p.add_subparsers(dest="plan_cmd", required=True, metavar="PLAN_COMMAND")
    q = psub.add_parser("show", help="the plan's change, reasons, driver's view and history")
    client_opts(q)
    q.add_argument("id", type=int, help="plan id")
    q = psub.add_parser("approve", help="approve a pending plan (admin); the loop applies it")
    client_opts(q)
    q.add_argument("id", type=int, help="plan id")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("up", help="apply an endpoint's wanted state now (ends a `down`; admin)")
    client_opts(p)
    p.add_argument("endpoint", help="endpoint name")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("down", help="remove all of an endpoint's machines and start none "
                       "until `up` (admin)")
    client_opts(p)
    p.add_argument("endpoint", help="endpoint name")
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("admin", help="users, tokens, backups (works on the database directly)")
    asub = p.add_subparsers(dest="admin_cmd", required=True, metavar="ADMIN_COMMAND")
    q = asub.add_parser("create-user", help="create a user (an owner of jobs)")
    config_opt(q)
    q.add_argument("name", help="user name")
    q.add_argument("--group", required=True, help="the user's group")
    q.add_argument("--share", type=float, default=1.0, help="fair-share weight (1.0)")
    q = asub.add_parser("create-token", help="create a token and print it (shown once)")
    config_opt(q)
    who = q.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user token acting for this owner")
    who.add_argument("--pilot", metavar="ENDPOINT",
                     help="a one-time bootstrap token: it registers one pilot of this endpoint")
    who.add_argument("--admin", action="store_true", help="an admin token")
    who.add_argument("--metrics", action="store_true",
                     help="a token that may only scrape GET /metrics (for Prometheus)")
    q.add_argument("--lifetime", type=float, help="seconds until it expires (never)")
    q.add_argument("--note", default="", help="what the token is for")
    q = asub.add_parser("users", help="list users")
    config_opt(q)
    q = asub.add_parser("tokens", help="list tokens (not job tokens; never the secrets)")
    config_opt(q)
    q = asub.add_parser("backup", help="back the SQLite database up to a new file while the "
                        "controller runs (PostgreSQL: pg_dump)")
    config_opt(q)
    q.add_argument("path", help="the backup file to make")
    q = asub.add_parser("restore", help="restore a backup as the configured (new) database; "
                        "jobs running at the backup's time are rescheduled as interrupted")
    q.add_argument("path", nargs="?", help="the backup file (SQLite)")
    q.add_argument("--after-pg-restore", action="store_true",
                   help="PostgreSQL: finish a pg_restore into the configured database")
    config_opt(q)
    q = asub.add_parser("revoke", help="revoke a token by id")
    config_opt(q)
    q.add_argument("id", type=int, help="token id")
    p.set_defaults(fn=cmd_admin)

    p = sub.add_parser("explain", help="an endpoint's last scheduler decision: inputs, "
                       "candidate machine types with prices, why each machine started or stopped")
    client_opts(p)
    p.add_argument("endpoint", help="endpoint name")
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("replay", help="re-run a recorded scheduler tick, with the same or "
                       "another config, and show what would be decided differently")
    client_opts(p)
    p.add_argument("--tick", type=int, help="tick id (without: list recent ticks that "
                   "started or removed machines)")
    p.add_argument("--config", help="another config (TOML) to decide with; default: the "
                   "recorded one")
    p.add_argument("--endpoint", help="with no --tick: only this endpoint's ticks")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("whatif", help="what would it have cost? replay the jobs recorded in a "
                       "window with the settings in force and with another config, side by "
                       "side (admin)")
    client_opts(p)
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

    p = sub.add_parser("demo", help="run the whole loop on this machine with a local endpoint")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--stay", action="store_true", help="keep the controller up at the end, "
                   "for a look at the dashboard, until Ctrl-C")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)
    except ApiError as e:
        print(f"cloudpilot: {e.detail}" + (f" (HTTP {e.status})" if e.status else ""),
              file=sys.stderr)
        rc = 1
    except CloudpilotError as e:
        print(f"cloudpilot: {e.message}", file=sys.stderr)
        rc = 1
    except OSError as e:
        print(f"cloudpilot: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc)
