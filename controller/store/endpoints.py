"""The `endpoints` table (this module is its only writer) and `endpoint_events`: each
endpoint's state and message, the marks that steer its plans (down, up), its back-off and its
machine name counter."""

from __future__ import annotations

import json
import time
from typing import Any

from controller.domain.endpoints import Backoff, Endpoint, EndpointState
from controller.errors import NotFound
from controller.store.sql import Connection, Transactions, one_row


def bump_seq(c: Connection, endpoint: str, seq: int) -> None:
    """Keep the endpoint's machine name counter at least `seq` (inside the caller's
    transaction: a machine is recorded with its number at once)."""
    c.execute("UPDATE endpoints SET last_seq = ? WHERE name = ? AND last_seq < ?",
              (seq, endpoint, seq))


class EndpointStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    def sync(self, configs: list[dict[str, Any]], now: float | None = None) -> None:
        """Record the configured endpoints (keeping each one's state, marks and counter)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            for cfg in configs:
                c.execute(
                    "INSERT INTO endpoints (name, driver, config, last_seq, state, message,"
                    " updated_at) VALUES (?, ?, ?, 0, ?, '', ?) ON CONFLICT(name) DO UPDATE"
                    " SET driver = excluded.driver, config = excluded.config,"
                    " updated_at = excluded.updated_at",
                    (cfg["name"], cfg["driver"], json.dumps(cfg), EndpointState.OK.value, now),
                )

    # reading -----------------------------------------------------------------------------
    def get(self, name: str) -> Endpoint:
        with self.store.read() as c:
            row = one_row(c, f"no endpoint {name}", "SELECT * FROM endpoints WHERE name = ?", name)
        return Endpoint.from_row(row)

    def find(self) -> list[Endpoint]:
        with self.store.read() as c:
            return [Endpoint.from_row(r)
                    for r in c.execute("SELECT * FROM endpoints ORDER BY name")]

    def last_seq(self, name: str) -> int:
        with self.store.read() as c:
            row = c.execute("SELECT last_seq FROM endpoints WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def events(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's events, newest first."""
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT at, state, message FROM endpoint_events WHERE endpoint = ?"
                " ORDER BY id DESC LIMIT ?", (name, limit))]

    # writing -----------------------------------------------------------------------------
    def set_state(self, name: str, state: EndpointState, message: str,
                  now: float | None = None) -> None:
        self._set(name, state=state.value, message=message,
                  updated_at=time.time() if now is None else now)

    def set_down(self, name: str, by: str | None) -> None:
        """Take an endpoint down (its machines go, no new ones start), or up again (None)."""
        self._set(name, down_by=by)

    def ask_up(self, name: str, by: str | None) -> None:
        """Apply the endpoint's next plan without waiting for approval (None: done)."""
        self._set(name, up_by=by)

    def set_drift(self, name: str, drift: str | None) -> None:
        """What the endpoint's last drift check found (None: the stack matches the world)."""
        self._set(name, drift=drift)

    def set_backoff(self, name: str, backoff: Backoff) -> None:
        self._set(name, failures=backoff.failures, retry_at=backoff.not_before or None)

    def event(self, name: str, state: str, message: str, now: float | None = None) -> None:
        """Record what happened to an endpoint: a failure and its message, a recovery, down,
        up (`state` is an EndpointState's value, or `up`)."""
        with self.store.tx() as c:
            c.execute("INSERT INTO endpoint_events (endpoint, at, state, message)"
                      " VALUES (?, ?, ?, ?)",
                      (name, time.time() if now is None else now, state, message))

    def _set(self, name: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.store.tx() as c:
            cur = c.execute(f"UPDATE endpoints SET {sets} WHERE name = ?",
                            (*fields.values(), name))
            if cur.rowcount == 0:
                raise NotFound(f"no endpoint {name}")
