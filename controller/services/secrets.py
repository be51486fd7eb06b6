"""Pilot tokens the controller hands to the machines it starts, kept in files (mode 0600) so
that pilots keep working across controller restarts and a redeploy writes the same config."""

from __future__ import annotations

import os
from pathlib import Path

from controller.auth import Role
from controller.errors import Unauthorized
from controller.store import Store


def stored_pilot_token(store: Store, path: Path, endpoint: str, note: str) -> str:
    """The pilot token kept at `path` while it is still a valid pilot token of `endpoint`;
    else a new one, written there."""
    if path.exists():
        token = path.read_text().strip()
        try:
            p = store.tokens.verify(token)
            if p.role == Role.PILOT and p.endpoint == endpoint:
                return token
        except Unauthorized:
            pass
    token = store.tokens.issue(Role.PILOT, endpoint=endpoint, note=note)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token
