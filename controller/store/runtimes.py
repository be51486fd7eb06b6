"""Run-time history: the last two real run times of each task queue and each owner (the
`run_times` table), from which controller/domain/runtime_prediction.py predicts how long the
next job will run. Written as a job ends, in the report's own transaction (one statement);
read by the reconcile loop once a tick for the task queues with waiting work."""

from __future__ import annotations

from collections.abc import Iterable

from controller.domain.runtime_prediction import RunHistory
from controller.store.sql import Connection, Transactions

QUEUE, OWNER = "queue", "owner"
_CHUNK = 500  # names in one IN list

# both rows in one statement: the newest run time becomes `last`, the one before `prev`
# (runtime_prediction.KEEP = 2); rows are always written owner first, so two reports at once
# (PostgreSQL) lock them in the same order
RECORD = ("INSERT INTO run_times (kind, name, last, prev, at) VALUES (?, ?, ?, NULL, ?),"
          " (?, ?, ?, NULL, ?) ON CONFLICT (kind, name) DO UPDATE"
          " SET prev = run_times.last, last = excluded.last, at = excluded.at")


class RunTimeStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    @staticmethod
    def record(c: Connection, tq_id: int, owner: str, seconds: float,
               now: float) -> None:
        """A job of task queue `tq_id` owned by `owner` ran `seconds` and ended (inside the
        caller's transaction)."""
        c.execute(RECORD, (OWNER, owner, seconds, now, QUEUE, str(tq_id), seconds, now))

    def history(self, tq_ids: Iterable[int], owners: Iterable[str]) -> RunHistory:
        """What is known of these task queues and owners (the others are left out)."""
        keys = [(QUEUE, str(i)) for i in sorted(set(tq_ids))]
        keys += [(OWNER, o) for o in sorted(set(owners))]
        out = RunHistory()
        with self.store.read() as c:
            for n in range(0, len(keys), _CHUNK):
                part = keys[n:n + _CHUNK]
                where = " OR ".join(["(kind = ? AND name = ?)"] * len(part))
                for kind, name, last, prev in c.execute(
                        f"SELECT kind, name, last, prev FROM run_times WHERE {where}",
                        [v for k in part for v in k]):
                    runs = (float(last),) if prev is None else (float(prev), float(last))
                    if kind == QUEUE:
                        out.by_queue[int(name)] = runs
                    else:
                        out.by_owner[name] = runs
        return out
