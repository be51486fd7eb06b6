"""What every cloudpilot stack reads from its config (namespace `cloudpilot`).

The controller's Pulumi driver writes this config (controller/drivers/pulumi.py,
`stack_config`): the set of *named* machines, their user-data (a secret: it holds the pilot
token), the endpoint and the cloud's settings."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pulumi

NAMESPACE = "cloudpilot"


@dataclass(frozen=True)
class Common:
    endpoint: str
    machines: tuple[str, ...]  # exactly the machines that should exist, by name
    contextualization: str = "pilot"  # or "ssh"
    public_key: str | None = None
    key_name: str | None = None
    ssh_cidr: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # priced endpoints: what the scheduler chose for a machine (instanceType or flavor,
    # availabilityZone, spot); machines not named here get the endpoint's settings
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_common(cfg: pulumi.Config) -> Common:
    machines = json.loads(cfg.get("machines") or "[]")
    if not isinstance(machines, list) or not all(isinstance(m, str) for m in machines):
        raise ValueError("cloudpilot:machines must be a JSON list of machine names")
    if len(set(machines)) != len(machines):
        raise ValueError("cloudpilot:machines names a machine twice")
    return Common(
        endpoint=cfg.require("endpoint"),
        machines=tuple(sorted(machines)),
        contextualization=cfg.get("contextualization") or "pilot",
        public_key=cfg.get("publicKey"),
        key_name=cfg.get("keyName"),
        ssh_cidr=cfg.get("sshCidr"),
        tags=json.loads(cfg.get("tags") or "{}"),
        specs=json.loads(cfg.get("machineSpecs") or "{}"),
    )


def user_data_of(cfg: pulumi.Config, machines: tuple[str, ...],
                 given: Mapping[str, str] | None = None) -> dict[str, pulumi.Output[str]]:
    """Each machine's user-data as a Pulumi secret (it holds the endpoint's pilot token).

    The controller hands it to the inline program (`given`), so it is never on a command line
    nor in the stack's config file; run by the CLI, the program reads the secret config
    `cloudpilot:userData` (name -> user-data) instead."""
    if given is not None:
        missing = sorted(set(machines) - set(given))
        if missing:
            raise ValueError(f"no user-data for {missing}")
        return {name: pulumi.Output.secret(given[name]) for name in machines}
    all_data: pulumi.Output[Any] = cfg.require_secret_object("userData")

    def one(name: str) -> pulumi.Output[str]:
        def pick(d: dict[str, str]) -> str:
            if name not in d:
                raise ValueError(f"cloudpilot:userData has no entry for {name}")
            return d[name]

        return pulumi.Output.secret(all_data.apply(pick))

    return {name: one(name) for name in machines}


def machine_tags(common: Common, machine: str) -> dict[str, str]:
    return {**common.tags, "Name": machine, "cloudpilot:endpoint": common.endpoint,
            "cloudpilot:machine": machine}


class Declared(Protocol):
    def exports(self) -> dict[str, Any]:
        """The stack outputs: `security_group`, and `machines` (name -> id, private_ip,
        public_ip)."""
        ...


def run_program(declare: Callable[[Common, pulumi.Config, dict[str, pulumi.Output[str]]],
                                  Declared],
                user_data: Mapping[str, str] | None) -> None:
    """The body of every cloudpilot program: read the config, declare, export."""
    cfg = pulumi.Config(NAMESPACE)
    common = read_common(cfg)
    out = declare(common, cfg, user_data_of(cfg, common.machines, user_data))
    pulumi.export("endpoint", common.endpoint)
    for key, value in out.exports().items():
        pulumi.export(key, value)
