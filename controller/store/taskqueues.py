"""The task queues one controller process knows (the `task_queues` table is written by
store/jobs.py, at submission).

Two things are kept in memory: each task queue's requirements, read once and kept while the
queue has waiting work or was used lately (bounded: pruned to the live ones past `KEEP`), and
the *live snapshot* the matcher walks: the task queues with waiting jobs, bucketed by their
requirements (one fit test per shape, whatever the owners and priorities). The snapshot is read
with one walk of the waiting-jobs index that touches a row per live queue (a loose index scan),
never one per waiting job or per queue ever made; it is read again after work arrives or comes
back in this process, after another process says so (its wake-up), and at least every
`LIVE_TTL` seconds. A queue a claim finds empty leaves the snapshot at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from controller.domain.jobs import Requirements
from controller.domain.taskqueues import TaskQueue

KEEP = 10_000  # task queues remembered besides the live ones before the cache is pruned
LIVE_TTL = 1.0  # seconds: the live snapshot is read again at least this often
_CHUNK = 500  # ids in one IN list

# one row per task queue with waiting jobs: a loose index scan of idx_jobs_waiting (tq_id, id)
LIVE = ("WITH RECURSIVE live(id) AS (SELECT MIN(tq_id) FROM jobs INDEXED BY idx_jobs_waiting"
        " WHERE state = 'waiting'"
        " UNION ALL SELECT (SELECT MIN(tq_id) FROM jobs INDEXED BY idx_jobs_waiting"
        " WHERE state = 'waiting'"
        " AND tq_id > live.id) FROM live WHERE live.id IS NOT NULL)"
        " SELECT id FROM live WHERE id IS NOT NULL")

Shapes = dict[Requirements, list[TaskQueue]]  # live task queues by requirements


class TaskQueues:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: dict[int, TaskQueue] = {}
        self._keys: dict[str, int] = {}  # task_queue_key:priority -> id
        self._memo: dict[tuple[Requirements, str, str, int], int] = {}
        self._live: Shapes | None = None
        self._live_at = 0.0
        self._lock = threading.Lock()  # one reader of the snapshot at a time

    def __len__(self) -> int:
        """Task queues held in memory (for the tests that check the bound)."""
        return len(self._known)

    # submission ----------------------------------------------------------------------------
    def memo(self, memo: tuple[Requirements, str, str, int]) -> int | None:
        return self._memo.get(memo)

    def by_key(self, key: str) -> int | None:
        return self._keys.get(key)

    def remember(self, row: Any, memo: tuple[Requirements, str, str, int] | None = None
                 ) -> TaskQueue:
        """A task queue's row, kept (and the submission shape it answers, `memo`)."""
        tq = TaskQueue(row["id"], Requirements.from_dict(json.loads(row["requirements"])),
                       row["owner"], row["grp"], row["priority"])
        self._known[tq.id] = tq
        self._keys[row["key"]] = tq.id
        if memo is not None:
            self._memo[memo] = tq.id
        return tq

    def forget(self) -> None:
        """Drop everything (a submission rolled back: queues it made may not exist)."""
        self._known, self._keys, self._memo, self._live = {}, {}, {}, None

    # matching ------------------------------------------------------------------------------
    def known(self, c: Any, ids: Iterable[int]) -> dict[int, TaskQueue]:
        """These task queues (those unknown here read from the store: made by another process,
        or pruned)."""
        ids = list(ids)
        missing = [i for i in ids if i not in self._known]
        for at in range(0, len(missing), _CHUNK):
            part = missing[at:at + _CHUNK]
            for r in c.execute(f"SELECT * FROM task_queues WHERE id IN"
                               f" ({','.join('?' * len(part))})", part).fetchall():
                self.remember(r)
        return {i: self._known[i] for i in ids if i in self._known}

    def live(self, c: Any) -> Shapes:
        """The snapshot: task queues with waiting jobs, by requirements."""
        snap, now = self._live, self._clock()
        if snap is not None and now - self._live_at < LIVE_TTL:
            return snap
        with self._lock:
            if self._live is not None and now - self._live_at < LIVE_TTL:
                return self._live
            self._live = None  # work arriving while it is read makes it stale again
            ids = [r[0] for r in c.execute(LIVE).fetchall()]
            shapes: Shapes = {}
            for q in self.known(c, ids).values():
                shapes.setdefault(q.requirements, []).append(q)
            for qs in shapes.values():
                qs.sort(key=lambda q: q.id)
            self._prune(ids)
            if self._live is None:
                self._live, self._live_at = shapes, now
            return shapes

    def changed(self) -> None:
        """Work arrived or came back: read the snapshot again before the next match."""
        self._live = None

    def drained(self, q: TaskQueue) -> None:
        """A claim found no waiting job in `q`: out of the snapshot (copied, never changed
        under another thread's walk)."""
        snap = self._live
        if snap is None or q.requirements not in snap:
            return
        left = [x for x in snap[q.requirements] if x.id != q.id]
        shapes = dict(snap)
        if left:
            shapes[q.requirements] = left
        else:
            del shapes[q.requirements]
        if self._live is snap:
            self._live = shapes

    def trim(self) -> None:
        """Keep the cache within its bound (after a submission)."""
        snap = self._live
        self._prune([q.id for qs in (snap or {}).values() for q in qs])

    def _prune(self, live: list[int]) -> None:
        """Past KEEP, keep only the live task queues: memory bounded by the work waiting,
        not by every queue ever made."""
        if len(self._known) <= len(live) + KEEP:
            return
        keep = set(live)
        self._known = {i: q for i, q in self._known.items() if i in keep}
        self._keys = {k: i for k, i in self._keys.items() if i in keep}
        self._memo = {m: i for m, i in self._memo.items() if i in keep}
