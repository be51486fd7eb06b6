"""Fair share's memory: used core-seconds per owner and per group, decayed with a half-life,
and the slots and cores each holds now (the `held` table, kept by triggers)."""

from __future__ import annotations

import sqlite3

from controller.domain.taskqueues import GROUP, OWNER, FairShare, decay
from controller.store.sql import Transactions

# the slots and cores each owner and group holds, as this transaction sees them (PostgreSQL:
# with its own claims, applied to `held` only at its commit)
HELD_NOW = {
    "sqlite": "SELECT kind, name, cores FROM held WHERE n > 0",
    "postgres": "SELECT kind, name, SUM(cores) FROM (SELECT kind, name, n, cores FROM held"
                " UNION ALL SELECT kind, name, n, cores FROM held_pending"
                " WHERE xid = pg_current_xact_id_if_assigned()) AS h"
                " GROUP BY kind, name HAVING SUM(n) > 0",
}


class UsageStore:
    def __init__(self, store: Transactions, half_life: float = 86400.0) -> None:
        self.store = store
        self.half_life = half_life  # the controller sets it from its settings

    def charge(self, c: sqlite3.Connection, owner: str, group: str, core_seconds: float,
               now: float) -> None:
        """Add what a job used (its cores x how long it was held) inside the caller's
        transaction, decaying what was there to `now` first. (PostgreSQL: appended, and
        applied at commit in sorted order; controller/store/schema_pg.py says why.)"""
        if self.store.dialect.shared:
            c.executemany("INSERT INTO usage_pending (kind, name, core_seconds, at, half_life)"
                          " VALUES (?, ?, ?, ?, ?)",
                          [(OWNER, owner, core_seconds, now, self.half_life),
                           (GROUP, group, core_seconds, now, self.half_life)])
            return
        for kind, name in ((OWNER, owner), (GROUP, group)):
            row = c.execute("SELECT core_seconds, at FROM usage WHERE kind = ? AND name = ?",
                            (kind, name)).fetchone()
            value = core_seconds
            if row is not None:
                value += decay(row[0], row[1], now, self.half_life)
            c.execute("INSERT INTO usage (kind, name, core_seconds, at) VALUES (?, ?, ?, ?)"
                      " ON CONFLICT (kind, name) DO UPDATE SET"
                      " core_seconds = excluded.core_seconds, at = excluded.at",
                      (kind, name, value, now))

    def _read(self, c: sqlite3.Connection, now: float) -> tuple[
            dict[tuple[str, str], float], dict[tuple[str, str], float]]:
        usage = {(r[0], r[1]): decay(r[2], r[3], now, self.half_life)
                 for r in c.execute("SELECT kind, name, core_seconds, at FROM usage")}
        held = {(r[0], r[1]): float(r[2]) for r in c.execute(HELD_NOW[self.store.dialect.name])}
        return usage, held

    def fair_share(self, c: sqlite3.Connection, by: str, shares: dict[str, float],
                   group_shares: dict[str, float], now: float) -> FairShare:
        """The fair share standing at `now`, read inside the caller's transaction."""
        usage, held = self._read(c, now)
        return FairShare(by, self.half_life, shares, group_shares, usage, held)

    def standing(self, by: str, shares: dict[str, float], group_shares: dict[str, float],
                 now: float) -> FairShare:
        with self.store.read() as c:
            return self.fair_share(c, by, shares, group_shares, now)
