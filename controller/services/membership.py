"""Hosts joining and leaving SSH endpoints at run time, each one transaction.

Called by the API (POST/DELETE /api/v1/endpoints/{name}/hosts, and so `cloudpilot hosts
ENDPOINT join|leave`), and by cloud
endpoints in `ssh` contextualization mode: when such an endpoint's VM is up it calls
`join(store, paired_ssh_endpoint, name, address, source="cloud:<endpoint>")`, and `leave(...)`
when the VM is deleted. A joined host is `joining` until the SSH endpoint's loop reaches it
over SSH (facts gathered): then it is a member and takes work. Nothing here touches SSH."""

from __future__ import annotations

import re
from pathlib import Path

from controller.config.settings import EndpointConfig, Settings
from controller.domain.hostpool import Host, Membership
from controller.errors import InvalidInput, NotFound
from controller.services.secrets import bootstrap_token, forget_machine
from controller.store import Store

HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
ADDRESS = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
KEY_LINE = re.compile(r"^\S+ (ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$")


def ssh_endpoint(settings: Settings, endpoint: str) -> EndpointConfig:
    """The configured SSH endpoint of this name; refuse any other."""
    ep = settings.endpoint(endpoint)
    if ep is None:
        raise NotFound(f"no endpoint {endpoint}")
    if ep.driver != "ssh":
        raise InvalidInput(f"endpoint {endpoint} is a {ep.driver} endpoint; hosts join ssh "
                           "endpoints")
    return ep


def join(store: Store, ssh_endpoint: str, name: str, address: str, port: int = 22, *,
         source: str = "api", slots: int | None = None, host_key: str | None = None,
         now: float | None = None) -> Host:
    """Add a host to an SSH endpoint. It joins (takes work) once it answers on SSH.

    `host_key`, a known_hosts line ("ADDRESS TYPE BASE64"), pins the host's key (e.g. read
    from the VM's console or cloud-init output); without it the endpoint must already pin the
    key or trust on first use."""
    if not HOST_NAME.match(name):
        raise InvalidInput(f"invalid host name {name!r} (lowercase letters, digits, . and -)")
    if not ADDRESS.match(address):
        raise InvalidInput(f"invalid address {address!r}")
    if not 1 <= port <= 65535:
        raise InvalidInput(f"invalid port {port}")
    if host_key is not None and not KEY_LINE.match(host_key.strip()):
        raise InvalidInput("host_key must be a known_hosts line: 'ADDRESS TYPE BASE64KEY'")
    with store.tx():
        try:
            driver = store.endpoints.get(ssh_endpoint).driver
        except NotFound:
            driver = None
        if driver != "ssh":
            raise NotFound(f"no ssh endpoint {ssh_endpoint}")
        return store.hosts.join(ssh_endpoint, name, address, port, slots=slots, source=source,
                                host_key=host_key.strip() if host_key else None, now=now)


def leave(store: Store, ssh_endpoint: str, name: str, *, source: str = "api",
          now: float | None = None) -> Host:
    """Remove a host: the loop stops its pilot (running jobs are interrupted and go back to
    the queue) and revokes its pilot token."""
    return store.hosts.leave(ssh_endpoint, name, source=source, now=now)


def is_member(store: Store, ssh_endpoint: str, name: str) -> bool:
    h = store.hosts.get(ssh_endpoint, name, missing_ok=True)
    return h is not None and h.membership == Membership.MEMBER


# per-host pilot tokens ---------------------------------------------------------------------
def host_pilot_token(store: Store, data_dir: Path, endpoint: str, machine: str) -> str:
    """The bootstrap token of one SSH host's next pilot: its own, one-time, bound to the host's
    machine name (data_dir/secrets/ENDPOINT/MACHINE.pilot-token, mode 0600)."""
    return bootstrap_token(store, data_dir, endpoint, machine, f"ssh host {machine}")


def revoke_host_token(store: Store, data_dir: Path, endpoint: str, machine: str) -> bool:
    """Forget a host's pilot tokens (it left): its bootstrap token and its pilots'
    credentials are revoked and the file deleted."""
    return forget_machine(store, data_dir, endpoint, machine)
