"""Kinds of endpoint a site adds from its own package: entry points of the group
`cloudpilot.endpoint_kinds`, each naming the object for one `driver` value.

A kind is an object (a class or module) with

- `build(config, env)`: the `EndpointKind` the reconcile loop drives (see
  controller/reconcile/endpoint.py), given the endpoint's settings (a PluginEndpoint, its own
  options in `config.options`) and the loop's `LoopEnv`;
- optionally `Options`: a pydantic model of its own options (`[endpoints.options]`).

A package declares one in its pyproject.toml:

    [project.entry-points."cloudpilot.endpoint_kinds"]
    mykind = "mypackage.kind:MyKind"

and an endpoint uses it with `driver = "mykind"`."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "cloudpilot.endpoint_kinds"


@cache
def plugin_kinds() -> dict[str, Any]:
    """Every installed kind by its driver name (read once per process)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def plugin_kind(driver: str) -> Any | None:
    """The kind a plugin installs for `driver`, loaded; None if none does."""
    ep = plugin_kinds().get(driver)
    return None if ep is None else ep.load()


def installed(driver: str, builtin: Iterable[str]) -> str:
    """`driver` if a plugin installs a kind of that name; else a ValueError naming the kinds
    there are."""
    if plugin_kind(driver) is None:
        raise ValueError(f"unknown driver {driver!r}: one of {', '.join(builtin)}, or a kind "
                         f"a plugin adds (entry point group {GROUP})")
    return driver
