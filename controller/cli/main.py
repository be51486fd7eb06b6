"""The `cloudpilot` command: one module per command group (`controller/cli/<group>.py`), each
with a `register(sub)` that adds its commands; a command's `fn` returns the exit status."""

from __future__ import annotations

import argparse
import sys

from controller.cli import accounting, admin, decisions, fleet, jobs, plans, server
from controller.cli.client import ApiError
from controller.errors import CloudpilotError

# the order of the commands in `cloudpilot --help`
GROUPS = (server, jobs, fleet, accounting, plans, admin, decisions)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cloudpilot", description=(
        "cloudpilot: a job queue that grows and shrinks its own fleet of machines."))
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
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
