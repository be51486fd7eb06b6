"""Recorded scheduler ticks: inputs and decision per endpoint, compressed, with retention."""

from __future__ import annotations

import json
import zlib
from typing import Any

from controller.errors import NotFound
from controller.store.sql import Transactions


def _pack(doc: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)


def _unpack(blob: bytes) -> dict[str, Any]:
    return dict(json.loads(zlib.decompress(blob)))


class TickStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    def record(self, endpoint: str, at: float, inputs: dict[str, Any],
               decision: dict[str, Any], keep: int) -> int:
        """Keep one tick; drop this endpoint's oldest beyond `keep`. Returns the tick id."""
        with self.store.tx() as c:
            cur = c.execute(
                "INSERT INTO ticks (endpoint, at, starts, removes, inputs, decision)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (endpoint, at, len(decision["start"]), len(decision["remove"]), _pack(inputs),
                 _pack(decision)))
            tick_id = int(cur.fetchone()[0])
            row = c.execute("SELECT id FROM ticks WHERE endpoint = ? ORDER BY id DESC"
                            " LIMIT 1 OFFSET ?", (endpoint, keep)).fetchone()
            if row is not None:
                c.execute("DELETE FROM ticks WHERE endpoint = ? AND id <= ?",
                          (endpoint, row[0]))
        return tick_id

    def get(self, tick_id: int) -> dict[str, Any]:
        with self.store.read() as c:
            row = c.execute("SELECT * FROM ticks WHERE id = ?", (tick_id,)).fetchone()
        if row is None:
            raise NotFound(f"no tick {tick_id} (kept: the latest per endpoint, see "
                           "tick_retention)")
        return self._doc(row)

    def latest(self, endpoint: str) -> dict[str, Any]:
        with self.store.read() as c:
            row = c.execute("SELECT * FROM ticks WHERE endpoint = ? ORDER BY id DESC LIMIT 1",
                            (endpoint,)).fetchone()
        if row is None:
            raise NotFound(f"no recorded tick for endpoint {endpoint}")
        return self._doc(row)

    def find(self, endpoint: str | None = None, changes: bool = False,
             limit: int = 50) -> list[dict[str, Any]]:
        sql, args = "SELECT id, endpoint, at, starts, removes FROM ticks", []
        where = []
        if endpoint:
            where.append("endpoint = ?")
            args.append(endpoint)
        if changes:
            where.append("(starts > 0 OR removes > 0)")
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.read() as c:
            return [dict(r) for r in c.execute(sql + " ORDER BY id DESC LIMIT ?",
                                               (*args, limit))]

    def prices_seen(self, endpoint: str, since: float, until: float
                    ) -> list[tuple[float, dict[str, float]]]:
        """The spot prices the endpoint's ticks in [since, until) saw: (time, prices by
        type/zone), oldest first (of the ticks still kept: tick_retention). Issue 25."""
        with self.store.read() as c:
            rows = c.execute("SELECT at, inputs FROM ticks WHERE endpoint = ? AND at >= ? AND"
                             " at < ? ORDER BY at", (endpoint, since, until)).fetchall()
        out = []
        for at, blob in rows:
            prices = _unpack(blob).get("prices") or {}
            if prices:
                out.append((float(at), {k: float(v) for k, v in prices.items()}))
        return out

    @staticmethod
    def _doc(row: Any) -> dict[str, Any]:
        return {"id": row["id"], "endpoint": row["endpoint"], "at": row["at"],
                "inputs": _unpack(row["inputs"]), "decision": _unpack(row["decision"])}
