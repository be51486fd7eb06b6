"""The task queues one controller process knows (the `task_queues` table is written by
store/jobs.py, at submission).

Two things are kept in memory: each task queue's requirements, read once and kept while the
queue has waiting work or was used lately (bounded: pruned to the live ones past `KEEP`), and
the *live snapshot* the matcher walks: the task queues with waiting jobs, bucketed by their
requirements (one fit test per shape, whatever the owners and priorities). The snapshot is read
with one walk of the waiting-jobs index that touches a row per live queue (a loose index scan),
never one per waiting job or per queue ever made; it is read again after work arrives or comes
back in this process, after another process says so (its wake-up), and at least every
`LIVE_TTL` seconds. A queue a claim finds empty leaves the snapshot at once (noted as drained:
the walks skip it).

What fits a machine is worked out once per snapshot and machine shape (a *view*: the fitting
queues grouped by owner in fair-share's order within each, and their shapes from the smallest),
so a match costs the same with 50 task queues or 4,000: the machines of one type share a view
whatever each has free at the moment, and only a new snapshot (work arrived, or `LIVE_TTL`
passed) makes it be worked out again. Views are bounded per snapshot."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.domain.jobs import Requirements
from controller.domain.matching import SlotOffer, fits
from controller.domain.taskqueues import TaskQueue, by_owner

KEEP = 10_000  # task queues remembered besides the live ones before the cache is pruned
LIVE_TTL = 1.0  # seconds: the live snapshot is read again at least this often
_CHUNK = 500  # ids in one IN list
VIEWS_KEEP = 256  # offers whose view one snapshot keeps

# one row per task queue with waiting jobs: a loose index scan of idx_jobs_waiting (tq_id, id)
LIVE = ("WITH RECURSIVE live(id) AS (SELECT MIN(tq_id) FROM jobs INDEXED BY idx_jobs_waiting"
        " WHERE state = 'waiting'"
        " UNION ALL SELECT (SELECT MIN(tq_id) FROM jobs INDEXED BY idx_jobs_waiting"
        " WHERE state = 'waiting'"
        " AND tq_id > live.id) FROM live WHERE live.id IS NOT NULL)"
        " SELECT id FROM live WHERE id IS NOT NULL")

DRAINING = "SELECT name FROM machines WHERE draining <> 0"

Shapes = dict[Requirements, list[TaskQueue]]  # live task queues by requirements


@dataclass(frozen=True)
class View:
    """What fits one machine shape in one snapshot: the queues fitting it (what the machine
    has in all, for reservations; else the offer), by (owner, group), each owner's in fair
    share's order; and the same queues by shape, the fewest cores first."""

    owners: dict[tuple[str, str], list[TaskQueue]]
    shapes: list[tuple[Requirements, list[TaskQueue]]]


@dataclass
class Snapshot:
    """The live task queues at one reading, the views worked out from it, and the queues
    claims have since found empty; and the machines draining at that reading (a match with
    nothing to claim answers them without a transaction only when theirs is not among them)."""

    shapes: Shapes
    at: float
    draining: frozenset[str] = frozenset()
    views: dict[SlotOffer, View] = field(default_factory=dict)
    drained: set[int] = field(default_factory=set)

    def view(self, offer: SlotOffer, whole: SlotOffer | None) -> View:
        key = whole or offer
        got = self.views.get(key)
        if got is None:
            shapes = [(req, qs) for req, qs in self.shapes.items()  # a fit test per shape
                      if fits(req, key)]
            shapes.sort(key=lambda s: (s[0].cores, s[0].memory_mb))
            got = View(by_owner(q for _, qs in shapes for q in qs), shapes)
            if len(self.views) >= VIEWS_KEEP:
                self.views.clear()
            self.views[key] = got
        return got

    def waiting(self, view: View, offer: SlotOffer) -> bool:
        """Whether a queue of the view that fits what the machine has free now still has
        waiting work (the smallest shapes first: a fitting one is usually among the first)."""
        for req, qs in view.shapes:
            if req.cores > offer.cores:
                return False
            if fits(req, offer) and any(q.id not in self.drained for q in qs):
                return True
        return False


class TaskQueues:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: dict[int, TaskQueue] = {}
        self._keys: dict[str, int] = {}  # task_queue_key:priority -> id
        self._memo: dict[tuple[Requirements, str, str, int], int] = {}
        self._live: Snapshot | None = None
        self._lock = threading.Lock()  # one reader of the snapshot at a time
        self._changes = 0  # work arrived or came back this many times (`changed`)

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

    def live(self, c: Any) -> Snapshot:
        """The snapshot: task queues with waiting jobs, by requirements."""
        snap, now = self._live, self._clock()
        if snap is not None and now - snap.at < LIVE_TTL:
            return snap
        with self._lock:
            snap = self._live
            if snap is not None and now - snap.at < LIVE_TTL:
                return snap
            # work arriving while it is read makes it stale: it is then answered to this
            # reader, not kept for the next ones (a submission committed after this read began
            # must be seen by the pilots it wakes)
            changes = self._changes
            ids = [r[0] for r in c.execute(LIVE).fetchall()]
            shapes: Shapes = {}
            for q in self.known(c, ids).values():
                shapes.setdefault(q.requirements, []).append(q)
            for qs in shapes.values():
                qs.sort(key=lambda q: q.id)
            self._prune(ids)
            draining = frozenset(r[0] for r in c.execute(DRAINING).fetchall())
            fresh = Snapshot(shapes, now, draining=draining)
            if self._changes == changes:
                self._live = fresh
            return fresh

    def changed(self) -> None:
        """Work arrived or came back: read the snapshot again before the next match (and a
        snapshot being read now is not kept)."""
        self._changes += 1
        self._live = None

    def drained(self, q: TaskQueue) -> None:
        """A claim found no waiting job in `q`: the walks of this snapshot skip it."""
        snap = self._live
        if snap is not None:
            snap.drained.add(q.id)

    def trim(self) -> None:
        """Keep the cache within its bound (after a submission)."""
        snap = self._live
        self._prune([q.id for qs in (snap.shapes if snap else {}).values() for q in qs])

    def _prune(self, live: list[int]) -> None:
        """Past KEEP, keep only the live task queues: memory bounded by the work waiting,
        not by every queue ever made."""
        if len(self._known) <= len(live) + KEEP:
            return
        keep = set(live)
        self._known = {i: q for i, q in self._known.items() if i in keep}
        self._keys = {k: i for k, i in self._keys.items() if i in keep}
        self._memo = {m: i for m, i in self._memo.items() if i in keep}
