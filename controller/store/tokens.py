"""Users and tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from controller.auth import Principal, Role, hash_token, new_token
from controller.domain.jobs import Job
from controller.errors import Conflict, InvalidInput, NotFound, Unauthorized
from controller.store.sql import Transactions


class TokenStore:
    SHARES_TTL = 10.0  # users made by another process (the admin command) show up this soon

    def __init__(self, store: Transactions) -> None:
        self.store = store
        self._shares: dict[str, tuple[float, dict[str, float]]] = {}

    # users -------------------------------------------------------------------------------
    def create_user(self, name: str, group: str, share: float = 1.0) -> dict[str, object]:
        if not name or not group:
            raise InvalidInput("a user needs a name and a group")
        if share <= 0:
            raise InvalidInput("share must be positive")
        with self.store.tx() as c:
            if c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"user {name} exists already")
            c.execute(
                "INSERT INTO users (name, grp, share, created_at) VALUES (?, ?, ?, ?)",
                (name, group, share, time.time()),
            )
        self.forget_shares()
        self.store.changed("users")
        return {"name": name, "group": group, "share": share}

    def forget_shares(self) -> None:
        self._shares.clear()

    def users(self) -> list[dict[str, object]]:
        with self.store.read() as c:
            rows = c.execute("SELECT name, grp, share FROM users ORDER BY name").fetchall()
        return [{"name": r["name"], "group": r["grp"], "share": r["share"]} for r in rows]

    def shares(self) -> dict[str, float]:
        """Fair-share weights by owner (groups have theirs in the settings' group_shares)."""
        cached = self._shares.get("owner")
        if cached is not None and time.monotonic() - cached[0] < self.SHARES_TTL:
            return cached[1]
        out = {str(u["name"]): float(u["share"]) for u in self.users()}  # type: ignore[arg-type]
        self._shares["owner"] = (time.monotonic(), out)
        return out

    # tokens ------------------------------------------------------------------------------
    def issue(
        self,
        role: Role,
        *,
        owner: str | None = None,
        endpoint: str | None = None,
        job_id: int | None = None,
        machine: str | None = None,
        pilot_id: str | None = None,
        lifetime: float | None = None,
        note: str = "",
        conn: object = None,
    ) -> str:
        """Create a token and return it; only its hash is kept. A pilot token without a
        pilot_id is a one-time bootstrap token (bound to `machine` when given)."""
        group = None
        if role in (Role.USER, Role.JOB):
            with self.store.read() as c:
                row = c.execute("SELECT grp FROM users WHERE name = ?", (owner,)).fetchone()
            if row is None:
                raise NotFound(f"no user {owner}; create it first")
            group = row["grp"]
        elif owner is not None:
            raise InvalidInput(f"a {role.value} token has no owner")
        if role == Role.PILOT and not endpoint:
            raise InvalidInput("a pilot token needs an endpoint")
        if role != Role.PILOT and (endpoint or machine or pilot_id):
            raise InvalidInput("only pilot tokens have an endpoint, machine or pilot")
        token = new_token()
        now = time.time()
        values = (
            hash_token(token), role.value, owner, group, endpoint, job_id, machine, pilot_id,
            now, now + lifetime if lifetime else None, note,
        )
        sql = (
            "INSERT INTO tokens (hash, role, owner, grp, endpoint, job_id, machine, pilot_id,"
            " created_at, expires_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        if conn is not None:  # inside the caller's transaction
            conn.execute(sql, values)  # type: ignore[attr-defined]
        else:
            with self.store.tx() as c:
                c.execute(sql, values)
        return token

    def issue_for_jobs(self, c: Any, jobs: Sequence[Job], margin: float) -> list[str]:
        """A job token for each job just claimed, inside the claim's transaction, in one
        statement: it lives the job's max_runtime plus `margin`, for the job's owner and group
        (read from the job's row, not looked up again)."""
        now = time.time()
        tokens = [new_token() for _ in jobs]
        c.execute(
            "INSERT INTO tokens (hash, role, owner, grp, job_id, created_at, expires_at, note)"
            " VALUES " + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(jobs)),
            [v for j, t in zip(jobs, tokens, strict=True) for v in (
                hash_token(t), Role.JOB.value, j.owner, j.group, j.id, now,
                now + j.requirements.max_runtime + margin, f"job {j.id} attempt {j.attempt}")])
        return tokens

    def verify(self, token: str, now: float | None = None) -> Principal:
        """Who holds this token. Read from the database on every request, so a revoked
        token stops working at once."""
        now = time.time() if now is None else now
        with self.store.read() as c:
            row = c.execute("SELECT * FROM tokens WHERE hash = ?", (hash_token(token),)
                            ).fetchone()
        if row is None:
            raise Unauthorized("unknown token")
        if row["expires_at"] is not None and row["expires_at"] < now:
            if row["pilot_id"] is not None:
                raise Unauthorized(
                    f"this pilot's credential expired {now - row['expires_at']:.0f}s ago: no "
                    "heartbeat renewed it within its lifetime (twice its endpoint's "
                    "max_machine_age); the pilot must leave")
            raise Unauthorized("token expired")
        return Principal(
            token_id=row["id"], role=Role(row["role"]), owner=row["owner"], group=row["grp"],
            endpoint=row["endpoint"], job_id=row["job_id"], pilot_id=row["pilot_id"],
            machine=row["machine"], expires_at=row["expires_at"],
        )

    def exchange(self, bootstrap: Principal, pilot_id: str, machine: str,
                 note: str = "", *, lifetime: float) -> str:
        """Spend a bootstrap token: delete it and issue the pilot's own credential (living
        `lifetime` seconds unless renewed), in one transaction. A bootstrap token already
        spent (or revoked) gets Unauthorized."""
        if not bootstrap.is_bootstrap:
            raise InvalidInput("only a bootstrap token can be exchanged")
        with self.store.tx() as c:
            if c.execute("DELETE FROM tokens WHERE id = ? AND pilot_id IS NULL",
                         (bootstrap.token_id,)).rowcount != 1:
                raise Unauthorized("this bootstrap token was used already")
            return self.issue(Role.PILOT, endpoint=bootstrap.endpoint, machine=machine,
                              pilot_id=pilot_id, note=note or f"pilot {pilot_id}",
                              lifetime=lifetime, conn=c)

    def renew(self, token_id: int, until: float) -> None:
        """A pilot's own credential now lives until `until` (a heartbeat renewed it)."""
        with self.store.tx() as c:
            c.execute("UPDATE tokens SET expires_at = ? WHERE id = ? AND pilot_id IS NOT NULL",
                      (until, token_id))

    def revoke_pilot(self, pilot_id: str) -> int:
        """Revoke a pilot's own credential (it said goodbye)."""
        with self.store.tx() as c:
            return c.execute("DELETE FROM tokens WHERE pilot_id = ?", (pilot_id,)).rowcount

    @staticmethod
    def revoke_machine_credentials(c: Any, machine: str) -> int:
        """Inside the caller's transaction: revoke every pilot token bound to a machine that
        has just stopped, been lost or failed (its bootstrap token and its pilots' own)."""
        return int(c.execute("DELETE FROM tokens WHERE role = 'pilot' AND machine = ?",
                             (machine,)).rowcount)

    def revoke_machine(self, endpoint: str, machine: str) -> int:
        """Revoke every pilot token bound to one machine: its bootstrap token and the
        credentials of the pilots that registered from it (the host left)."""
        with self.store.tx() as c:
            return c.execute("DELETE FROM tokens WHERE role = 'pilot' AND endpoint = ? AND"
                             " machine = ?", (endpoint, machine)).rowcount

    def find(self) -> list[dict[str, object]]:
        with self.store.read() as c:
            rows = c.execute(
                "SELECT id, role, owner, endpoint, job_id, machine, pilot_id, created_at,"
                " expires_at, note FROM tokens WHERE role != 'job' ORDER BY id"
            ).fetchall()
        return [dict(r) for r in rows]

    def revoke(self, token_id: int) -> None:
        with self.store.tx() as c:
            if c.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount == 0:
                raise NotFound(f"no token {token_id}")
