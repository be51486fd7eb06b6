"""Cloud endpoints in `ssh` contextualization mode: their VMs join the paired SSH endpoint as
hosts (the seed talk's simple contextualization: a user with a key, then pilots over SSH).

Such a VM has no pilot of its own: the pilot runs on its joined host's machine
(`<ssh endpoint>-<vm name>`). So the VM is up when that host machine is running, and is busy or
idle as that machine is; the SSH endpoint watches reachability and reschedules its jobs."""

from __future__ import annotations

import logging

from controller.config.settings import CloudEndpointConfig, EndpointConfig
from controller.domain.hostpool import host_machine
from controller.domain.machines import MachineState
from controller.drivers.base import ObservedMachine
from controller.errors import CloudpilotError, NotFound
from controller.services import membership
from controller.store import Store

log = logging.getLogger("cloudpilot.pairing")


def paired(ep: EndpointConfig) -> str | None:
    """The SSH endpoint this cloud endpoint's VMs join, if it is in ssh mode."""
    if isinstance(ep, CloudEndpointConfig) and ep.contextualization == "ssh":
        return ep.ssh_endpoint
    return None


def sync(store: Store, ep: EndpointConfig, observed: list[ObservedMachine],
         now: float) -> None:
    """VMs the cloud reports up with an address join the SSH endpoint; VMs it no longer
    reports leave it; a VM whose host machine runs a pilot is running."""
    ssh = paired(ep)
    if ssh is None:
        return
    source = f"cloud:{ep.name}"
    joined = {h.name for h in store.hosts.find(ssh, include_left=False) if h.source == source}
    up = {m.name: m for m in observed if m.alive and m.address}
    for name, m in sorted(up.items()):
        try:
            if name not in joined:
                membership.join(store, ssh, name, str(m.address), source=source, now=now)
        except CloudpilotError as e:  # one bad VM must not stop the others
            log.warning("VM %s of %s could not join %s: %s", name, ep.name, ssh, e)
    for name in sorted(joined - up.keys()):
        membership.leave(store, ssh, name, source=source, now=now)
    for vm in store.machines.find(ep.name, live=True):
        if vm.state != MachineState.BOOTING or vm.name not in up:
            continue
        try:
            host = store.machines.get(host_machine(ssh, vm.name))
        except NotFound:
            continue  # not reached over SSH yet
        if host.state == MachineState.RUNNING:
            store.machines.move(vm.name, MachineState.RUNNING,
                                f"joined {ssh} as host {vm.name}; its pilot runs there", now,
                                if_in={MachineState.BOOTING})


def host_of(ep: EndpointConfig, vm: str) -> str | None:
    """The machine that carries a paired VM's pilot."""
    ssh = paired(ep)
    return None if ssh is None else host_machine(ssh, vm)
