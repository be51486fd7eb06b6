"""The controller: `serve` runs it, `demo` runs the whole loop on this machine."""

from __future__ import annotations

import argparse

from controller.cli import common
from controller.config.database import redact


def cmd_serve(args: argparse.Namespace) -> int:
    from controller import logs
    from controller.app import serve
    from controller.store import Store

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    settings = common.settings(args, **overrides)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.cli.demo import run_demo

    return run_demo(keep=args.keep, stay=args.stay)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the controller (API + scheduler loop)")
    common.config_opt(p)
    p.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default from config: 8080)")
    p.add_argument("--workers", type=int, help="controller processes on this machine "
                   "(default from config: 1; more than one needs a postgresql:// database)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("demo", help="run the whole loop on this machine with a local endpoint")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--stay", action="store_true", help="keep the controller up at the end, "
                   "for a look at the dashboard, until Ctrl-C")
    p.set_defaults(fn=cmd_demo)
