"""Bootstrap tokens the controller hands to the machines it starts (local processes, cloud
user-data, SSH hosts): one per machine, one-time (registering spends it), kept in a file
(data_dir/secrets/ENDPOINT/MACHINE.pilot-token, mode 0600) until spent, so that rendering a
machine's user-data or config twice gives the same bytes."""

from __future__ import annotations

import os
from pathlib import Path

from controller.auth import Role
from controller.errors import Unauthorized
from controller.store import Store

BOOTSTRAP_LIFETIME = 3600.0  # an unspent bootstrap token dies this long after its issue


def token_path(data_dir: Path, endpoint: str, machine: str) -> Path:
    return data_dir / "secrets" / endpoint / f"{machine}.pilot-token"


def bootstrap_token(store: Store, data_dir: Path, endpoint: str, machine: str,
                    note: str = "", lifetime: float = BOOTSTRAP_LIFETIME) -> str:
    """The machine's bootstrap token kept in its file while it is unspent and valid; else a
    new one (bound to this endpoint and machine name), written there."""
    path = token_path(data_dir, endpoint, machine)
    if path.exists():
        token = path.read_text().strip()
        try:
            p = store.tokens.verify(token)
            if p.is_bootstrap and p.endpoint == endpoint and p.machine == machine:
                return token
        except Unauthorized:
            pass
    token = store.tokens.issue(Role.PILOT, endpoint=endpoint, machine=machine,
                               lifetime=lifetime, note=note or f"bootstrap of {machine}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def forget_machine(store: Store, data_dir: Path, endpoint: str, machine: str) -> bool:
    """The machine is gone for good: revoke its bootstrap token and its pilots' credentials,
    and delete the file. False when there was no file."""
    path = token_path(data_dir, endpoint, machine)
    store.tokens.revoke_machine(endpoint, machine)
    if not path.exists():
        return False
    path.unlink(missing_ok=True)
    return True
