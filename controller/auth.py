"""Tokens: issue, hash, verify, roles.

Tokens are random 256-bit strings; only their SHA-256 is stored (like API keys elsewhere: a
random secret needs no salt). Roles:
- admin: everything;
- user: acts for one owner (submit, list, kill its own jobs);
- pilot: two kinds. A bootstrap token (no pilot id) is what a machine gets at boot: it may
  only register, once (optionally only as one machine name); registering deletes it and
  answers the pilot's own credential (bound to that pilot id), which may only match,
  heartbeat, upload output, report and say goodbye for that one pilot;
- job: given to a pilot with each job, scoped to that job and its owner, with a lifetime; the
  payload gets it in its environment (CLOUDPILOT_JOB_TOKEN) and may act for the owner with it;
- metrics: may only scrape GET /metrics (for Prometheus; an admin token may scrape too).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "cp_"


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    PILOT = "pilot"
    JOB = "job"
    METRICS = "metrics"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified token's role and scope."""

    token_id: int
    role: Role
    owner: str | None = None  # user and job tokens
    group: str | None = None
    endpoint: str | None = None  # pilot tokens
    job_id: int | None = None  # job tokens
    pilot_id: str | None = None  # a pilot's own credential (None: a bootstrap token)
    machine: str | None = None  # pilot tokens bound to one machine name
    expires_at: float | None = None  # Unix time; None: never (a pilot's own renews it)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def operator(self) -> str:
        """How plans and endpoints name the one behind an approval, `up` or `down`."""
        return f"{self.role.value} token {self.token_id}" + (
            f" ({self.owner})" if self.owner else "")

    @property
    def is_bootstrap(self) -> bool:
        """A one-time pilot token: it may register one pilot and nothing else."""
        return self.role == Role.PILOT and self.pilot_id is None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
