"""Where a waiting job goes, for the simulator and the live matcher alike (one rule, two
callers: controller/simulate/engine.py and the store's matcher behind the pilots' route).

- Busiest, then fullest first: a job goes to the machine that can hold it whose running
  jobs keep it busy longest (by their predicted run time, else their max_runtime: `ends`),
  then to the fullest (the fewest free cores, then the least free memory, then the name),
  so the other machines empty and stop sooner. The simulator lets machines ask in that
  order; the live controller answers a pilot only with work that no machine before it in
  that order, asking at the same moment, can hold.
- `extend_limit` (optional): a machine running jobs takes only jobs that should end at most
  that long after them, so that it is not kept alive, mostly empty, by one long job.
- Reservation with bounded backfill (EASY backfilling, as batch schedulers do): when the job
  fair share puts first on a machine does not fit its free cores yet, the machine holds its
  cores for it, and hands narrower jobs only those that end (by `TaskQueue.runtime`:
  predicted, else max_runtime) before the running jobs free enough cores for it (the shadow
  time). A reservation whose shadow time is further off than `reserve_limit` is not made:
  cores are not held idle long, and the wide job goes to another machine (the scheduler
  starts one for it if need be).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from controller.domain.jobs import Requirements
from controller.domain.matching import SlotOffer, fits
from controller.domain.taskqueues import TaskQueue


def placement_key(busy_until: float, free_cores: int, free_memory_mb: int,
                  name: str) -> tuple[float, int, int, str]:
    """The order in which machines get work: the one whose running jobs keep it busy longest
    first (a job placed there extends its life least, for any job: the others empty and
    stop sooner), then the fullest (fewest free cores, then least free memory)."""
    return (-busy_until, free_cores, free_memory_mb, name)


def busy_until(running: Sequence[Running]) -> float:
    """The latest time a machine's running jobs should end (0: it runs none)."""
    return max((r.ends for r in running), default=0.0)


@dataclass(frozen=True)
class Asking:
    """A machine whose pilot asks for work now, with what it has free."""

    machine: str
    free: SlotOffer
    busy_until: float = 0.0

    @property
    def key(self) -> tuple[float, int, int, str]:
        return placement_key(self.busy_until, self.free.cores, self.free.memory_mb,
                             self.machine)

    def fuller_than(self, other: Asking) -> bool:
        """Whether this machine comes before `other` in placement order for a reason (busier
        for longer, or fuller): machines alike are not ordered by their names here, so that a
        thousand idle pilots of one type do not leave work to each other."""
        return self.key[:3] < other.key[:3]


def placement_order(asking: Iterable[Asking]) -> list[Asking]:
    return sorted(asking, key=lambda a: a.key)


def leave_to_fuller(req: Requirements, me: Asking, asking: Iterable[Asking]) -> bool:
    """True if a machine fuller than `me` (Asking.fuller_than), asking at the same moment,
    can hold the job: `me` leaves it to that one (it is handed the job when it asks)."""
    return any(a.fuller_than(me) and a.machine != me.machine and fits(req, a.free)
               for a in asking)


@dataclass(frozen=True)
class Running:
    """A job running on a machine: what it takes and when it should end (predicted, else by
    its max_runtime)."""

    cores: int
    memory_mb: int
    ends: float


def shadow_time(need: Requirements, free: SlotOffer, running: Sequence[Running],
                now: float) -> float:
    """When enough of the running jobs will have ended (at their latest) for `need` to fit
    in the machine's free room; inf if never."""
    cores, mem = free.cores, free.memory_mb
    if cores >= need.cores and mem >= need.memory_mb:
        return now
    for r in sorted(running, key=lambda r: r.ends):
        cores, mem = cores + r.cores, mem + r.memory_mb
        if cores >= need.cores and mem >= need.memory_mb:
            return max(r.ends, now)
    return math.inf


def outlives(busy: float, end: float, cores: int, own: int, strand_limit: float) -> bool:
    """Whether a job of `own` cores ending at `end` may go on a machine of `cores` whose
    running jobs should end at `busy`: the other cores it keeps up after them, for as long as
    it outlives them, stay within `strand_limit` core-seconds."""
    return max(cores - own, 1) * (end - busy) <= strand_limit


def choose(ordered: Iterable[TaskQueue], free: SlotOffer, whole: SlotOffer | None,
           running: Sequence[Running], now: float, reserve_limit: float,
           skip: Iterable[int] = (),
           waits: Callable[[TaskQueue], bool] | None = None,
           extend_limit: float | None = None,
           strand_limit: float | None = None) -> TaskQueue | None:
    """The task queue a machine takes its next job from.

    `ordered`: task queues in fair-share order; `free`: what the machine has free now;
    `whole`: what it has in all (None: no reservations, the first queue that fits `free`);
    `running`: its running jobs. The first queue that fits the whole machine is its head: if
    it fits `free` it is taken; if not, the machine reserves cores for it (when its shadow
    time is within `reserve_limit`) and takes only narrower jobs that end before then.
    `waits` says whether a queue still has a waiting job (checked before reserving for it;
    None: every queue given has one). `extend_limit`: on a machine running jobs, only jobs
    that should end at most this long after them (by `q.runtime`) are taken (None: any).
    `strand_limit`: on a machine running jobs, only jobs whose outliving them leaves at most
    this many core-seconds of its other cores idle (`outlives`; None: any)."""
    skipped = set(skip)
    shadow: float | None = None
    last = math.inf
    busy = busy_until(running) if running else 0.0
    if extend_limit is not None and running:
        last = busy + extend_limit
    for q in ordered:
        if q.id in skipped:
            continue
        req = q.requirements
        if fits(req, free):
            end = now + q.runtime
            ok = end <= last and (strand_limit is None or not running or whole is None
                                  or outlives(busy, end, whole.cores, req.cores, strand_limit))
            if ok and (shadow is None or end <= shadow):
                return q
            continue
        if shadow is None and whole is not None and fits(req, whole) and (
                waits is None or waits(q)):
            t = shadow_time(req, free, running, now)
            if t - now <= reserve_limit:
                shadow = t  # hold the cores for it: backfill only what ends before
    return None


class AskingPilots:
    """The pilots asking for work at this moment (inside a match request), for the live
    controller's fullest-first rule. Held in memory by the API process, read and written by
    its request threads: every read works on a copy taken at once (a dict copy is atomic)."""

    def __init__(self) -> None:
        self._asking: dict[str, Asking] = {}
        self._deferred = False  # some pilot left work to a fuller one since the last check

    def defer(self, leave: bool) -> bool:
        self._deferred = self._deferred or leave
        return leave

    def fuller(self, pilot_id: str, left: Iterable[Requirements]) -> list[str]:
        """The pilots asking now whose machines come before `pilot_id`'s in placement order
        and can hold work it left to them: they are woken to take it at once."""
        me = self._asking.get(pilot_id)
        if me is None:
            return []
        reqs = list(left)
        # a copy: other requests' threads enter and leave while this one looks
        return [p for p, a in list(self._asking.items())
                if p != pilot_id and a.fuller_than(me) and a.machine != me.machine
                and any(fits(r, a.free) for r in reqs)]

    def deferred(self) -> bool:
        """Whether work was left to fuller machines since the last call (then the others
        are woken to look again, as the fuller one may have taken other work)."""
        was, self._deferred = self._deferred, False
        return was

    def enter(self, pilot_id: str, asking: Asking) -> None:
        self._asking[pilot_id] = asking

    def leave(self, pilot_id: str) -> None:
        self._asking.pop(pilot_id, None)

    def now(self, than: Asking | None = None) -> list[Asking]:
        """The machines asking now; with `than`, only those fuller than it (another
        machine's): the ones a match may leave work to, found once per look rather than for
        every queue it weighs (a thousand idle machines alike: none)."""
        them = list(self._asking.values())
        if than is None:
            return them
        return [a for a in them if a.machine != than.machine and a.fuller_than(than)]
