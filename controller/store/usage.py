"""Fair share's memory: used core-seconds per owner and per group, decayed with a half-life,
and the slots and cores each holds now (the `held` table, kept by triggers)."""

from __future__ import annotations

from controller.domain.taskqueues import GROUP, OWNER, FairShare, decay
from controller.store.sql import Connection, Transactions

# the slots and cores each owner and group holds, as this transaction sees them (PostgreSQL:
# with its own claims, applied to `held` only at its commit)
HELD_NOW = {
    "sqlite": "SELECT kind, name, cores FROM held WHERE n > 0",
    "postgres": "SELECT kind, name, SUM(cores) FROM (SELECT kind, name, n, cores FROM held"
                " UNION ALL SELECT kind, name, n, cores FROM held_pending"
                " WHERE xid = pg_current_xact_id_if_assigned()) AS h"
                " GROUP BY kind, name HAVING SUM(n) > 0",
}
# the usage (0) and held (1) rows, in one statement
STANDING = {k: "SELECT 0, kind, name, core_seconds, at FROM usage UNION ALL"
               f" SELECT 1, h.*, 0 FROM ({v}) AS h"
            for k, v in HELD_NOW.items()}


class UsageStore:
    def __init__(self, store: Transactions, half_life: float = 86400.0) -> None:
        self.store = store
        self.half_life = half_life  # the controller sets it from its settings

    def charge(self, c: Connection, owner: str, group: str, core_seconds: float,
               now: float) -> None:
        """Add what a job used (its cores x how long it was held) inside the caller's
        transaction, decaying what was there to `now` first. (PostgreSQL: appended, and
        applied at commit in sorted order; controller/store/schema_pg.py says why.)"""
        if self.store.dialect.shared:
            c.execute("INSERT INTO usage_pending (kind, name, core_seconds, at, half_life)"
                      " VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)",
                      (OWNER, owner, core_seconds, now, self.half_life,
                       GROUP, group, core_seconds, now, self.half_life))
            return
        keys = ((OWNER, owner), (GROUP, group))
        was = {(r[0], r[1]): decay(r[2], r[3], now, self.half_life) for r in c.execute(
            "SELECT kind, name, core_seconds, at FROM usage WHERE (kind = ? AND name = ?)"
            " OR (kind = ? AND name = ?)", (OWNER, owner, GROUP, group))}
        c.execute("INSERT INTO usage (kind, name, core_seconds, at) VALUES (?, ?, ?, ?),"
                  " (?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET"
                  " core_seconds = excluded.core_seconds, at = excluded.at",
                  [v for k in keys for v in (*k, core_seconds + was.get(k, 0.0), now)])

    def _read(self, c: Connection, now: float) -> tuple[
            dict[tuple[str, str], float], dict[tuple[str, str], float]]:
        usage: dict[tuple[str, str], float] = {}
        held: dict[tuple[str, str], float] = {}
        for which, kind, name, value, at in c.execute(STANDING[self.store.dialect.name]):
            if which:
                held[(kind, name)] = float(value)
            else:
                usage[(kind, name)] = decay(value, at, now, self.half_life)
        return usage, held

    def fair_share(self, c: Connection, by: str, shares: dict[str, float],
                   group_shares: dict[str, float], now: float) -> FairShare:
        """The fair share standing at `now`, read inside the caller's transaction."""
        usage, held = self._read(c, now)
        return FairShare(by, self.half_life, shares, group_shares, usage, held)

    def standing(self, by: str, shares: dict[str, float], group_shares: dict[str, float],
                 now: float) -> FairShare:
        with self.store.read() as c:
            return self.fair_share(c, by, shares, group_shares, now)
