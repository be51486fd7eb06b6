"""How long a job will really run, predicted from the run times its owner's jobs really had,
as batch schedulers do (Tsafrir, Etsion and Feitelson, "Backfilling using system-generated
predictions rather than user runtime estimates", IEEE TPDS 2007): the mean of the last two
run times, never above what the job asked for (`max_runtime`, the limit that kills it, which
users overstate by a large factor).

Pure: the history comes in as data, learned only from jobs that have ended (a job's own run
time is never known before it ends). The same code predicts in the simulator and live.

- A job's task queue (same owner, same requirements) is the best guide: its last two run
  times. With no history there, the owner's last two (jobs of other shapes, capped by this
  job's request); with none at all, the request.
- The scheduler is told it as `TaskQueue.predicted_runtime` (`with_prediction`): the
  simulator as the trace goes, the live reconcile loop from the store's `run_times` table
  (each job that ends `done` records its run time, from its start to its report).
- A running job that outlives its prediction gets a new one: twice the time it has run so
  far, never above its request.
- The live matcher reads no history (no statement on its hot path): the reconcile loop hands
  it each tick's predictions by task queue (`Predicted`), for the waiting jobs it may take and
  the jobs its machine runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from controller.domain.taskqueues import TaskQueue

KEEP = 2  # run times remembered per key (Tsafrir et al.: the last two)


def predict(recent: Iterable[float], limit: float) -> float:
    """The mean of `recent` run times (the newest last; at most the last KEEP count), never
    above `limit` nor below one second; `limit` itself with no history."""
    runs = list(recent)[-KEEP:]
    if not runs:
        return limit
    return max(1.0, min(limit, sum(runs) / len(runs)))


def extend(predicted: float, elapsed: float, limit: float) -> float:
    """A new prediction for a job still running `elapsed` seconds after it started: the old
    one while it holds, else twice the time run so far (capped by `limit`)."""
    if elapsed < predicted:
        return predicted
    return min(limit, max(2.0 * elapsed, elapsed + 1.0))


@dataclass
class RunHistory:
    """The last KEEP real run times per task queue and per owner, newest last: the in-memory
    form of what the store keeps."""

    by_queue: dict[Hashable, tuple[float, ...]] = field(default_factory=dict)
    by_owner: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def record(self, queue: Hashable, owner: str, seconds: float) -> None:
        """A job of `queue` and `owner` ended after running `seconds`."""
        self.by_queue[queue] = (*self.by_queue.get(queue, ())[-(KEEP - 1):], seconds)
        self.by_owner[owner] = (*self.by_owner.get(owner, ())[-(KEEP - 1):], seconds)

    def predict(self, queue: Hashable, owner: str, limit: float) -> float:
        """The predicted run time of the next job of `queue` (owned by `owner`) that may run
        for at most `limit` seconds."""
        runs = self.by_queue.get(queue) or self.by_owner.get(owner, ())
        return predict(runs, limit)


def with_prediction(tq: TaskQueue, history: RunHistory) -> TaskQueue:
    """Task queue `tq` with the predicted run time of its next job (keyed by its id and
    owner), as the scheduler and `cloudpilot explain` see it."""
    limit = float(tq.requirements.max_runtime)
    return replace(tq, predicted_runtime=history.predict(tq.id, tq.owner, limit))


@dataclass(frozen=True)
class HeldJob:
    """A job a machine holds (matched or running), as the predictor needs it."""

    machine: str
    queue: int  # its task queue
    owner: str
    started_at: float
    limit: float  # its max_runtime


def predicted_ends(jobs: Iterable[HeldJob], history: RunHistory,
                   now: float) -> dict[str, float]:
    """When each machine's held jobs should end, at the latest (its `busy_until`): each job's
    start plus its prediction, a new one (`extend`) if it has outlived it."""
    ends: dict[str, float] = {}
    for j in jobs:
        run = extend(history.predict(j.queue, j.owner, j.limit), now - j.started_at, j.limit)
        ends[j.machine] = max(ends.get(j.machine, 0.0), j.started_at + run)
    return ends


@dataclass(frozen=True)
class Predicted:
    """Predicted run times by task queue id, as the reconcile loop worked them out at its last
    tick, for the matcher: a task queue not in it is taken at its max_runtime."""

    runtimes: Mapping[int, float] = field(default_factory=dict)

    def queue(self, tq: TaskQueue) -> TaskQueue:
        """`tq` with its predicted run time (unchanged if it has one or none is known)."""
        got = self.runtimes.get(tq.id)
        if got is None or tq.predicted_runtime is not None:
            return tq
        return replace(tq, predicted_runtime=min(got, float(tq.requirements.max_runtime)))

    def ends(self, tq_id: int | None, started: float, limit: float, now: float) -> float:
        """When a job of task queue `tq_id` that started at `started` and may run `limit`
        seconds should end: its prediction, a new one if it has outlived it (`extend`)."""
        got = self.runtimes.get(tq_id) if tq_id is not None else None
        if got is None:
            return started + limit
        return started + extend(min(got, limit), now - started, limit)


def predicted(queues: Iterable[TaskQueue], held: Iterable[HeldJob],
              history: RunHistory) -> Predicted:
    """The predictions the matcher is handed: each task queue's (waiting work, `queues`, with
    `predicted_runtime` set) and each held job's task queue's, from `history`."""
    out = {q.id: q.predicted_runtime for q in queues if q.predicted_runtime is not None}
    for j in held:
        if j.queue not in out:
            out[j.queue] = history.predict(j.queue, j.owner, j.limit)
    return Predicted(out)
