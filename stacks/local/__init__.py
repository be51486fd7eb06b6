"""Local machines for one cloudpilot endpoint, through the real Pulumi engine: exactly the
named machines in the stack config, each a pilot process on this host (its own directory,
process tree, bootstrap token and sandbox, as the local driver starts them), declared as a
Pulumi dynamic resource whose create starts the pilot and whose delete stops it.

An endpoint uses it with `driver = "local"` and `via = "pulumi"`: plans are then the engine's
own previews, applied with `up --plan`, and the stack's state says which machines exist. The
pilot's config (it holds the machine's bootstrap token) is an input the program marks secret,
so the state holds it encrypted with the stack's passphrase. The provider runs in the
engine's `pulumi-resource-pulumi-python` plugin (a launcher of `python -m pulumi.dynamic`
that the controller's Pulumi driver writes)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider

from stacks.common import Common, run_program

IDENTITY = ("root", "machine")  # a change of these replaces the machine


class PilotProvider(ResourceProvider):
    """A machine's life: create starts its pilot (idempotent: a pilot already running under
    that name, e.g. started by an update that was killed before it saved its state, is
    adopted, never started twice), read reports whether it still runs, delete stops it."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        from controller.drivers.local import PilotProcesses

        procs = PilotProcesses(Path(props["root"]))
        pid = procs.start(props["machine"], json.loads(props["config"]))
        return CreateResult(id_=props["machine"], outs=_outs(props, pid))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # the config changes whenever a new bootstrap token is issued: not a reason to
        # restart a machine whose pilot has registered
        replaces = [k for k in IDENTITY if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(replaces), replaces=replaces,
                          delete_before_replace=True)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        from controller.drivers.local import PilotProcesses

        pid = PilotProcesses(Path(props["root"])).running(props["machine"])
        if pid is None:  # gone behind the controller's back: refresh drops it from the state
            return ReadResult(id_=None, outs={})
        return ReadResult(id_=id_, outs=_outs(props, pid))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        from controller.drivers.local import PilotProcesses

        PilotProcesses(Path(props["root"]), float(props.get("stopGrace") or 10)).stop(
            [props["machine"]])


def _outs(props: Mapping[str, Any], pid: int) -> dict[str, Any]:
    """What the state keeps as outputs: no config (it holds the token)."""
    return {"root": props["root"], "machine": props["machine"], "pid": pid,
            "stopGrace": props.get("stopGrace")}


class LocalMachine(Resource, module="cloudpilot", name="LocalMachine"):
    """Type pulumi-python:dynamic/cloudpilot:LocalMachine."""

    pid: pulumi.Output[int]

    def __init__(self, name: str, root: str, config: pulumi.Output[str],
                 stop_grace: float) -> None:
        super().__init__(PilotProvider(), name,
                         {"root": root, "machine": name, "config": config,
                          "stopGrace": stop_grace, "pid": None})


@dataclass
class LocalMachines:
    machines: dict[str, LocalMachine]

    def exports(self) -> dict[str, Any]:
        return {"machines": {name: {"id": m.pid, "private_ip": "127.0.0.1", "public_ip": None}
                             for name, m in self.machines.items()}}


def declare(common: Common, cfg: pulumi.Config,
            configs: dict[str, pulumi.Output[str]]) -> LocalMachines:
    root = cfg.require("machinesDir")
    grace = float(cfg.get("stopGrace") or 10)
    return LocalMachines({name: LocalMachine(name, root, configs[name], grace)
                          for name in common.machines})


def program(user_data: Mapping[str, str] | None = None) -> None:
    """The stack: `user_data` is each machine's pilot config (JSON) from the controller (a
    local machine's user-data); run by the CLI, the secret config `cloudpilot:userData`."""
    run_program(declare, user_data)
