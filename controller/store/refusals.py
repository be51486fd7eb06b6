"""The `offer_refusals` table (this module is its only writer): per endpoint and offer (pool:
machine type / zone / market), what the cloud said when it last refused a launch there and
until when the offer is blocked (domain/refusals.py decides that). Shared by every controller
process, kept across restarts."""

from __future__ import annotations

from collections.abc import Iterable

from controller.domain.refusals import Refusal
from controller.store.sql import Transactions


class RefusalStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    def find(self, endpoint: str | None = None) -> list[tuple[str, Refusal]]:
        """(endpoint, refusal) pairs, of one endpoint or all, by endpoint and pool."""
        sql, args = "SELECT * FROM offer_refusals", [endpoint]
        if endpoint is not None:
            sql += " WHERE endpoint = ?"
        else:
            args = []
        with self.store.read() as c:
            rows = c.execute(sql + " ORDER BY endpoint, pool", tuple(args)).fetchall()
        return [(r["endpoint"], Refusal(r["pool"], r["kind"], r["message"],
                                        int(r["failures"]), float(r["since"]),
                                        float(r["blocked_until"]))) for r in rows]

    def of(self, endpoint: str) -> list[Refusal]:
        return [r for _, r in self.find(endpoint)]

    def record(self, endpoint: str, refusals: Iterable[Refusal]) -> None:
        with self.store.tx() as c:
            for r in refusals:
                c.execute(
                    "INSERT INTO offer_refusals (endpoint, pool, kind, message, failures,"
                    " since, blocked_until) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (endpoint, pool) DO UPDATE SET kind = excluded.kind,"
                    " message = excluded.message,"
                    " failures = excluded.failures, since = excluded.since,"
                    " blocked_until = excluded.blocked_until",
                    (endpoint, r.pool, r.kind, r.message, r.failures, r.since, r.until))

    def clear(self, endpoint: str, pools: Iterable[str]) -> int:
        """A launch succeeded in these pools: their refusals are forgotten. How many were."""
        n = 0
        with self.store.tx() as c:
            for pool in sorted(set(pools)):
                n += c.execute("DELETE FROM offer_refusals WHERE endpoint = ? AND pool = ?",
                               (endpoint, pool)).rowcount
        return n
