"""Jobs: submit, list, show, follow, watch and kill them."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from controller.cli import common
from controller.cli.client import ApiError
from controller.errors import CloudpilotError


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
        inputs += [{"name": Path(p).name, "sandbox": common.client(args).upload_sandbox(p)}
                   for p in args.sandbox or []]
        jobs = [{"executable": cmd[0], "arguments": cmd[1:], "requirements": req,
                 "priority": args.priority, "name": args.name or "", "env": env,
                 "inputs": inputs, "outputs": args.output or []}] * args.count
    out = common.client(args).submit(jobs)
    ids = out["ids"]
    print(f"submitted {len(ids)} job(s): " + (
        ", ".join(map(str, ids)) if len(ids) <= 20 else f"{ids[0]}..{ids[-1]}"))
    for jid, why in out.get("unmatchable", {}).items():
        print(f"  job {jid} waits: {why}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = common.client(args).jobs(state=args.state, owner=args.owner, endpoint=args.endpoint,
                              limit=args.limit)
    rows = [[j["id"], j["owner"], j["state"], j["executable"], j["machine"], j["exit_code"],
             j["waiting_reason"] or j["reason"] or ""] for j in jobs]
    print(common.table(rows, ["ID", "OWNER", "STATE", "EXECUTABLE", "MACHINE", "EXIT", "REASON"]))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    c = common.client(args)
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
        print(f"  {common.when(e['at'])}  {e['from_state'] or '-':>11} -> {e['to_state']:<11} "
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

    return watch(common.client(args), plain=True if args.plain else None, once=args.once,
                 interval=args.interval)


def cmd_kill(args: argparse.Namespace) -> int:
    c = common.client(args)
    rc = 0
    for jid in args.ids:
        try:
            j = c.kill(jid)
            print(f"job {jid}: {j['state']}")
        except ApiError as e:
            print(f"job {jid}: {e.detail}", file=sys.stderr)
            rc = 1
    return rc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="submit a command, or a JSON/TOML file of jobs")
    common.client_opts(p)
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
    common.client_opts(p)
    p.add_argument("--state", help="filter by state")
    p.add_argument("--owner", help="filter by owner (admins)")
    p.add_argument("--endpoint", help="filter by endpoint")
    p.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("job", help="one job: state, events and output")
    common.client_opts(p)
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
    common.client_opts(p)
    p.add_argument("--plain", action="store_true",
                   help="one plain line per change (the default when not on a terminal)")
    p.add_argument("--once", action="store_true", help="print once and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (2)")
    p.set_defaults(fn=cmd_watch)

    p = sub.add_parser("kill", help="kill jobs")
    common.client_opts(p)
    p.add_argument("ids", type=int, nargs="+", help="job ids")
    p.set_defaults(fn=cmd_kill)
