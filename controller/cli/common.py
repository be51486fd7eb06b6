"""What every command group of the `cloudpilot` command shares: the options naming the
controller or the config, the client and settings they give, and plain-text tables."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from controller.cli.client import ApiClient
from controller.config.settings import Settings
from controller.errors import CloudpilotError

DEFAULT_URL = "http://127.0.0.1:8080"

def client_opts(p: argparse.ArgumentParser) -> None:
    """--url and --token: the options of a command that talks to the controller's API."""
    p.add_argument("--url", help=f"controller URL (env CLOUDPILOT_URL; {DEFAULT_URL})")
    p.add_argument("--token", help="bearer token (env CLOUDPILOT_TOKEN)")


def config_opt(p: argparse.ArgumentParser) -> None:
    """--config: the option of a command that reads the settings (and the database)."""
    p.add_argument("--config", help="TOML config file (env CLOUDPILOT_CONFIG; "
                   "none: the embedded default with one local endpoint)")


def endpoint_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                     help: str, fn: Callable[[argparse.Namespace], int]) -> None:
    """A command that talks to the controller about one endpoint, named by its argument."""
    p = sub.add_parser(name, help=help)
    client_opts(p)
    p.add_argument("endpoint", help="endpoint name")
    p.set_defaults(fn=fn)


def settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    path = args.config or os.environ.get("CLOUDPILOT_CONFIG")
    return Settings.load(path, **overrides)


def client(args: argparse.Namespace) -> ApiClient:
    token = args.token or os.environ.get("CLOUDPILOT_TOKEN")
    if not token:
        raise CloudpilotError("no token: pass --token or set CLOUDPILOT_TOKEN "
                              "(make one with `cloudpilot admin create-token`)")
    return ApiClient(args.url or os.environ.get("CLOUDPILOT_URL", DEFAULT_URL), token)


def when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def table(rows: list[list[Any]], head: list[str]) -> str:
    cells = [head] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)
