"""Dashboard sessions: a random id in an HttpOnly cookie, stored only as its hash, bound to the
token that logged in (a revoked or expired token ends its sessions), with a CSRF secret."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.auth import Principal, Role, hash_token

if TYPE_CHECKING:
    from controller.store.db import Store


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str  # the secret every state-changing form and request of this session carries
    expires_at: float


def create(store: Store, token_id: int, lifetime: float,
           now: float | None = None) -> tuple[str, Session]:
    """A new session for the token; returns the cookie value (shown once) and the session."""
    now = time.time() if now is None else now
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with store.tx() as c:
        c.execute("INSERT INTO web_sessions (hash, token_id, csrf, created_at, expires_at)"
                  " VALUES (?, ?, ?, ?, ?)", (hash_token(sid), token_id, csrf, now, now + lifetime))
        c.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now,))
    found = get(store, sid, now)
    assert found is not None
    return sid, found


def get(store: Store, sid: str, now: float | None = None) -> Session | None:
    """The live session with this cookie value, or None."""
    now = time.time() if now is None else now
    with store.read() as c:
        r = c.execute(
            "SELECT s.csrf, s.expires_at, t.id, t.role, t.owner, t.grp, t.endpoint, t.job_id,"
            " t.expires_at AS token_expires FROM web_sessions s JOIN tokens t"
            " ON t.id = s.token_id WHERE s.hash = ?", (hash_token(sid),)).fetchone()
    if r is None or r["expires_at"] < now or (
            r["token_expires"] is not None and r["token_expires"] < now):
        return None
    p = Principal(token_id=r["id"], role=Role(r["role"]), owner=r["owner"], group=r["grp"],
                  endpoint=r["endpoint"], job_id=r["job_id"])
    return Session(p, r["csrf"], r["expires_at"])


def end(store: Store, sid: str) -> None:
    with store.tx() as c:
        c.execute("DELETE FROM web_sessions WHERE hash = ?", (hash_token(sid),))
