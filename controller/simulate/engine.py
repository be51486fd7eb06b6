"""The discrete-event replay of one policy: a virtual clock, jobs arriving at their submit
times, a simulated fleet, and the controller's own code for every decision:

- task queues and fair share: controller.domain.taskqueues (TaskQueue, fair_share_order),
- matching: controller.domain.matching.fits and controller.domain.placement.choose, what
  the store's matcher calls, with the same order (fair share with memory, then priority,
  then the oldest job) and the same reservations for wide jobs,
- the scheduler: controller.domain.scheduling.decide, called every `tick` seconds exactly as
  controller/reconcile/loop.py calls it (task queue snapshot, machine views, spot prices
  now), except at ticks where it would decide nothing new (see `_quiet`).

Run times: the scheduler and the matcher are told what `runtimes` says (RUNTIMES): by
default the predictions of controller.domain.runtime_prediction, learned from the jobs that
have ended; the oracle policy the true run times.

The simulator adds only what the cloud and the pilots would do: machines come up after
`boot_time`, jobs run for their traced run time, spot machines are interrupted when the
market price passes their max price (their jobs go back to the queue, as `interrupted`),
and launches are refused where `refusals` (a pool sold out for a while) or `refusal_rate`
say so (issue 24): the refused offer is blocked (domain/refusals.py) and the scheduler
decides again at once, as the live loop does at its next tick, seconds later; with
`blocklist` off, a refusal backs the whole endpoint off as before issue 24.
Machines with room ask for work in the live controller's placement order
(controller/domain/placement.py: the machine busy longest, then the fullest), so that the
others empty and go away."""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from controller.domain import refusals
from controller.domain.delivery import Delivery
from controller.domain.endpoints import Backoff
from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer, fits
from controller.domain.placement import Running, busy_until, choose, placement_key
from controller.domain.pricing import Offer, PriceSeries
from controller.domain.refusals import Refusal
from controller.domain.runtime_prediction import RunHistory, extend, with_prediction
from controller.domain.scheduling import Budget, EndpointSpec, decide
from controller.domain.taskqueues import (
    GROUP,
    OWNER,
    FairShare,
    TaskQueue,
    UsageLedger,
    fair_share_order,
)
from controller.simulate.trace import TraceJob

M = MachineState
# event kinds, in the order they act at one instant (OVERRUN: a job still runs at its
# predicted end, and gets a new prediction)
UP, END, INTERRUPT, OVERRUN, TICK = 0, 1, 2, 3, 4


@dataclass(slots=True)
class SimJob:
    trace: TraceJob
    tq: int
    cores: int
    memory_mb: int
    starts: list[float] = field(default_factory=list)
    end: float | None = None
    machine: str | None = None
    attempt: int = 0
    ends: int = 0  # how often it ended (the conservation check: exactly once)
    predicted: float = 0.0  # how long its current run should take (set when it starts)
    first_machine: str | None = None  # where it first ran


@dataclass(slots=True)
class SimMachine:
    name: str
    offer: Offer
    created: float
    state: MachineState = M.BOOTING
    up_at: float | None = None
    ended: float | None = None
    jobs: set[int] = field(default_factory=set)
    free_slots: int = 0
    free_cores: int = 0
    free_mem: int = 0
    idle_since: float | None = None
    interrupted: bool = False
    largest_job: tuple[int, int] = (0, 0)  # cores, memory of the largest job it ran
    draining: bool = False  # takes no new jobs (consolidation); stops when empty
    busy_until: float = 0.0  # the latest its running jobs should end (predicted)
    version: int = 0  # bumped on every change: older entries in the placement heap are void
    # where its time went (for the report's gap decomposition)
    mark: float = 0.0  # the last change of its jobs
    busy_s: float = 0.0  # seconds up with at least one job
    used_core_s: float = 0.0  # core-seconds its jobs took
    lost_core_s: float = 0.0  # core-seconds of runs cut short (interrupted: run again)


@dataclass
class Sample:
    t: float
    waiting: int
    running: int
    machines: dict[str, int]  # live machines by type
    spend: float  # USD per hour at this instant


@dataclass
class Outcome:
    policy: str
    jobs: list[SimJob]
    machines: list[SimMachine]
    samples: list[Sample]
    unfit: list[TraceJob]
    interruptions: int = 0
    rescheduled: int = 0
    end: float = 0.0
    series: dict[str, PriceSeries] = field(default_factory=dict)
    # the ticks whose decision left waiting work uncovered (a cap, the budget, no price under
    # the max): the waits they explain; and why, each (report.LIMIT_CAUSES)
    short_ticks: list[float] = field(default_factory=list)
    refused: int = 0  # launches the cloud refused (issue 24)
    short_causes: list[str] = field(default_factory=list)

    def cost(self, m: SimMachine) -> float:
        """USD: the integral of the machine's price over its life."""
        end = m.ended if m.ended is not None else self.end
        if m.offer.spot:
            return self.series[m.offer.price_key].integral(m.created, end) / 3600
        return m.offer.on_demand_price * (end - m.created) / 3600


@dataclass(frozen=True)
class SimOptions:
    boot_time: float = 120.0
    tick: float = 60.0
    job_memory_mb: int = 1024  # for jobs whose trace does not say
    shares: dict[str, float] = field(default_factory=dict)
    group_shares: dict[str, float] = field(default_factory=dict)
    fair_share_by: str = "owner"
    half_life: float = 86400.0
    sample_every: float = 600.0
    # --- issue 24: when the cloud says no ------------------------------------------------
    refusals: tuple[tuple[str, float, float], ...] = ()  # (pool, from, until): sold out
    refusal_rate: float = 0.0  # each other launch refused with this probability
    refusal_seed: int = 24
    blocklist: bool = True  # False: a refusal backs the endpoint off (before issue 24)
    refusal_ttl: float = 180.0
    refusal_ttl_max: float = 3600.0
    # pools (fnmatch patterns, e.g. '*/eu-west-1a/*') whose machines take another boot time
    # than `boot_time`; with any, the scheduler is told what each pool's machines took
    # (domain/delivery.py), as the live loop measures it
    boot_times: tuple[tuple[str, float], ...] = ()
    # issue 25 (the what-if): after the last job, the scheduler goes on deciding until the
    # fleet is gone (idle machines stop after idle_timeout, as they really do), rather than
    # every machine ending with the last job
    run_out: bool = False
    # how long after the last job's end the replay goes on for jobs that have not run (a
    # fleet that can never run them: prices above every max, no machines allowed)
    give_up: float = 30 * 86400


# What the scheduler is told of run times: "requested" (max_runtime only), "predicted"
# (learned from the jobs that ended: domain/runtime_prediction.py), "oracle" (each job's
# true run time: the bound of what prediction can give)
RUNTIMES = ("requested", "predicted", "oracle")


def _short_cause(reasons: tuple[str, ...]) -> str:
    """Why a decision left waiting work uncovered: capped by a spend limit ("budget"), by a
    count such as max_machines or max_starts_per_cycle ("cap"), else no offer it fits was
    open: priced above its max price, or blocked after a refusal ("price")."""
    capped = next((r for r in reasons if ": capped by " in r), "")
    if "spend" in capped:
        return "budget"
    return "cap" if capped else "price"


class Simulation:
    """One policy over one trace. `static` is a fixed fleet (offer, count) that never changes;
    otherwise `decide` runs every tick with `spec`."""

    def __init__(self, policy: str, spec: EndpointSpec, jobs: list[TraceJob],
                 series: dict[str, PriceSeries], opts: SimOptions,
                 static: tuple[Offer, int] | None = None,
                 progress: Callable[[float, int], None] | None = None,
                 runtimes: str = "predicted") -> None:
        if runtimes not in RUNTIMES:
            raise ValueError(f"runtimes {runtimes!r}: one of {', '.join(RUNTIMES)}")
        self.policy = policy
        self.runtimes = runtimes
        if not opts.boot_times:  # every machine boots in boot_time: nothing to weigh
            spec = replace(spec, wait_cost=0.0)
        self.history = RunHistory()
        # task queue -> as the scheduler sees it now (with its owner's history version)
        self.views: dict[int, tuple[int, TaskQueue]] = {}
        self.learned: dict[str, int] = {}  # owner -> run times learned (a version)
        self.spec = spec
        self.opts = opts
        self.static = static
        self.progress = progress
        self.series = {k: s for k, s in series.items()
                       if any(o.price_key == k for o in spec.offers)}
        self.queues: dict[int, TaskQueue] = {}
        self.waiting: dict[int, list[int]] = {}  # task queue -> heap of job ids
        self.n_waiting = 0
        self.jobs: dict[int, SimJob] = {}
        self.unfit: list[TraceJob] = []
        self.trace = self._admit(jobs)
        self.machines: dict[str, SimMachine] = {}
        self.live: dict[str, SimMachine] = {}
        # machines with room, in placement order (a heap; entries of an older version of a
        # machine are void)
        self.order: list[tuple[tuple[float, int, int, str], int, str]] = []
        self.ledger = UsageLedger(opts.half_life)  # used core-seconds, decayed
        self.held: dict[tuple[str, str], float] = {}  # cores held now
        self.events: list[tuple[float, int, int, str]] = []
        self.seq = itertools.count()
        self.last_seq = 0
        self.now = 0.0
        self.done = 0
        self.interruptions = 0
        self.rescheduled = 0
        self.samples: list[Sample] = []
        self.short_ticks: list[float] = []
        self.short_causes: list[str] = []
        self.dirty = True  # something changed since the last tick's decision
        self.wholes: dict[str, SlotOffer] = {}  # what a machine of each pool offers in all
        self.fit_whole: dict[tuple[int, str], bool] = {}  # (task queue, pool) -> fits
        # issue 24: offers refused lately; the endpoint's back-off (blocklist off)
        self.blocked: dict[str, Refusal] = {}
        self.backoff = Backoff()
        self.refused = 0
        self.rng = random.Random(opts.refusal_seed)
        self.boots: dict[str, list[float]] = {}  # pool -> boot seconds of its machines
        self.never: dict[str, int] = {}  # pool -> machines failed by boot_timeout
        self.ran: dict[str, float] = {}  # pool -> hours its ended machines ran
        self.lost: dict[str, int] = {}  # pool -> its machines interrupted

    # set-up ------------------------------------------------------------------------------
    def _admit(self, jobs: list[TraceJob]) -> list[SimJob]:
        keys: dict[tuple[Requirements, str, str], int] = {}
        shapes = [SlotOffer(self.spec.name, o.cores, o.memory_mb, self.spec.shape.tags,
                            self.spec.shape.max_runtime) for o in self.spec.offers]
        out = []
        for tj in jobs:
            mem = tj.memory_mb if tj.memory_mb > 0 else self.opts.job_memory_mb
            limit = max(tj.requested_time, tj.run, 1.0)
            req = Requirements(cores=tj.cores, memory_mb=mem, max_runtime=int(limit) + 1)
            if not any(fits(req, s) for s in shapes):
                self.unfit.append(tj)
                continue
            k = (req, tj.user, tj.group)
            tq = keys.get(k)
            if tq is None:
                tq = keys[k] = len(keys) + 1
                self.queues[tq] = TaskQueue(tq, req, tj.user, tj.group, 0)
            sj = SimJob(tj, tq, tj.cores, mem)
            self.jobs[tj.id] = sj
            out.append(sj)
        return out

    def _push(self, t: float, kind: int, what: str) -> None:
        heapq.heappush(self.events, (t, kind, next(self.seq), what))

    # the run -----------------------------------------------------------------------------
    def run(self) -> Outcome:
        total = len(self.trace)
        if self.static is not None:
            offer, n = self.static
            for _ in range(n):
                self._start(offer, 0.0)
        else:
            self._push(0.0, TICK, "")
        self._schedule_interruptions()
        i = 0
        next_sample = 0.0
        # a guard against a fleet that can never run what is left (prices above every max)
        deadline = max((j.trace.submit + j.trace.run for j in self.trace),
                       default=0.0) + self.opts.give_up
        while (self.done < total or (self.opts.run_out and self.live)) \
                and self.now <= deadline:
            t_arr = self.trace[i].trace.submit if i < total else float("inf")
            if self.events and self.events[0][0] <= t_arr:
                t, kind, _, what = heapq.heappop(self.events)
                self.now = t
                self._event(kind, what)
            elif i < total:
                self.now = t_arr
                while i < total and self.trace[i].trace.submit <= self.now:
                    self._enqueue(self.trace[i])
                    i += 1
            else:
                break  # nothing left that could end a job
            if self.n_waiting and self.order:
                self._dispatch()
            if self.now >= next_sample:
                self._sample()
                next_sample = self.now + self.opts.sample_every
                if self.progress:
                    self.progress(self.now, self.done)
        for m in list(self.live.values()):
            self._end_machine(m, "the replay ended")
        self._sample()
        return Outcome(self.policy, list(self.jobs.values()), list(self.machines.values()),
                       self.samples, self.unfit, self.interruptions, self.rescheduled,
                       self.now, self.series, self.short_ticks, self.refused,
                       self.short_causes)

    def _event(self, kind: int, what: str) -> None:
        if kind not in (TICK, OVERRUN):
            self.dirty = True
        if kind == TICK:
            self._tick()
            if self.done < len(self.trace) or (self.opts.run_out and self.live):
                self._push(self.now + self.opts.tick, TICK, "")
        elif kind == END:
            job_id, attempt = what.split(":")
            self._job_end(self.jobs[int(job_id)], int(attempt))
        elif kind == OVERRUN:
            job_id, attempt = what.split(":")
            self._overrun(self.jobs[int(job_id)], int(attempt))
        elif kind == UP:
            m = self.machines[what]
            if m.state == M.BOOTING:
                m.state, m.up_at, m.idle_since = M.RUNNING, self.now, self.now
                if self.opts.boot_times:
                    self.boots.setdefault(m.offer.pool, []).append(self.now - m.created)
                self._has_room(m)
        elif kind == INTERRUPT:
            key, bid = what.split("|")
            for m in list(self.live.values()):
                if m.offer.spot and m.offer.price_key == key and m.offer.bid == float(bid):
                    self.interruptions += 1
                    m.interrupted = True
                    self._end_machine(m, "spot interruption")

    def _schedule_interruptions(self) -> None:
        """The market: wherever a pool's price passes its max price, its machines go."""
        horizon = max((j.trace.submit + j.trace.run for j in self.trace), default=0.0) * 2
        seen = set()
        for o in self.spec.offers:
            if not o.spot or (o.price_key, o.bid) in seen or o.price_key not in self.series:
                continue
            seen.add((o.price_key, o.bid))
            for a, _ in self.series[o.price_key].above(o.bid, 0.0, horizon + 86400):
                self._push(a, INTERRUPT, f"{o.price_key}|{o.bid}")

    # jobs --------------------------------------------------------------------------------
    def _enqueue(self, j: SimJob) -> None:
        self.dirty = True
        heapq.heappush(self.waiting.setdefault(j.tq, []), j.trace.id)
        self.n_waiting += 1
        if self.runtimes == "oracle":
            self.views.pop(j.tq, None)  # its head may have changed

    def _view(self, q: int) -> TaskQueue:
        """Task queue `q` with the predicted run time of its next job."""
        tq = self.queues[q]
        version = self.learned.get(tq.owner, 0)
        got = self.views.get(q)
        if got is not None and got[0] == version:
            return got[1]
        v = tq
        if self.runtimes == "predicted":
            v = with_prediction(tq, self.history)
        elif self.runtimes == "oracle" and self.waiting.get(q):
            v = replace(tq, predicted_runtime=self.jobs[self.waiting[q][0]].trace.run)
        self.views[q] = (version, v)
        return v

    def _dispatch(self) -> None:
        """Machines with room ask for work in placement order (domain/placement.py: the
        machine busy longest first, then the fullest); draining machines take nothing."""
        unchanged = []
        while self.order and self.n_waiting:
            entry = heapq.heappop(self.order)
            m = self.machines[entry[2]]
            if entry[1] != m.version:
                continue  # void: the machine changed since
            self._match(m)
            if m.version == entry[1]:
                unchanged.append(entry)  # nothing fit: it keeps its place
        for entry in unchanged:
            heapq.heappush(self.order, entry)

    def _has_room(self, m: SimMachine) -> None:
        """Record a change of the machine; put it in placement order if it has room."""
        m.version += 1
        if m.state == M.RUNNING and m.free_slots > 0 and m.free_cores > 0 and not m.draining:
            key = placement_key(m.busy_until, m.free_cores, m.free_mem, m.name)
            heapq.heappush(self.order, (key, m.version, m.name))

    def _running(self, m: SimMachine) -> list[Running]:
        return [Running(j.cores, j.memory_mb, self._ends(j))
                for j in (self.jobs[i] for i in m.jobs)]

    def _ends(self, j: SimJob) -> float:
        """When the job should end: its start plus its predicted run time."""
        return j.starts[-1] + j.predicted

    def _overrun(self, j: SimJob, attempt: int) -> None:
        """The job still runs at its predicted end: a new prediction (an event, so that the
        decisions between two ticks see the same machines whether or not a tick is
        skipped)."""
        if attempt != j.attempt or j.machine is None:
            return  # it ended or was interrupted meanwhile
        limit = float(self.queues[j.tq].requirements.max_runtime)
        new = extend(j.predicted, self.now - j.starts[-1], limit)
        if new <= j.predicted:
            return  # at its max_runtime: it ends now
        self.dirty = True
        j.predicted = new
        m = self.machines[j.machine]
        m.busy_until = max(m.busy_until, self._ends(j))
        self._has_room(m)
        self._push(self._ends(j), OVERRUN, f"{j.trace.id}:{j.attempt}")

    def _whole(self, o: Offer) -> SlotOffer:
        whole = self.wholes.get(o.pool)
        if whole is None:
            whole = self.wholes[o.pool] = replace(
                self.spec.shape, endpoint=self.spec.name, cores=o.cores,
                memory_mb=o.memory_mb, spot=o.spot)
        return whole

    def _fits_whole(self, q: int, whole: SlotOffer, pool: str) -> bool:
        k = (q, pool)
        ok = self.fit_whole.get(k)
        if ok is None:
            ok = self.fit_whole[k] = fits(self.queues[q].requirements, whole)
        return ok

    def _match(self, m: SimMachine) -> None:
        """What the store's matcher does for one pilot: while it has room, the job that
        domain/placement.choose picks among the task queues in fair-share order (with a
        reservation for a wide job when its cores free up soon)."""
        whole = self._whole(m.offer)
        pool = m.offer.pool
        matched = False
        while m.free_slots > 0 and self.n_waiting:
            cands = [self._view(q) for q, h in self.waiting.items()
                     if h and self._fits_whole(q, whole, pool)]
            if not cands:
                break
            free = replace(whole, cores=m.free_cores, memory_mb=m.free_mem)
            running = self._running(m)
            q = choose(fair_share_order(cands, self._fair_share()), free, whole, running,
                       self.now, self.spec.reserve_limit,
                       extend_limit=self.spec.extend_limit,
                       strand_limit=self.spec.strand_limit)
            if q is None:
                break
            job = self.jobs[heapq.heappop(self.waiting[q.id])]
            if not self.waiting[q.id]:
                del self.waiting[q.id]
            self.n_waiting -= 1
            job.predicted = q.runtime
            if self.runtimes == "oracle":
                self.views.pop(q.id, None)
            self._run(job, m)
            matched = True
        if matched:
            self._has_room(m)

    def _fair_share(self) -> FairShare:
        o = self.opts
        return FairShare(o.fair_share_by, o.half_life, o.shares, o.group_shares,
                         self.ledger.at(self.now), self.held)

    def _hold(self, j: SimJob, sign: int) -> None:
        for key in ((OWNER, j.trace.user), (GROUP, j.trace.group)):
            self.held[key] = self.held.get(key, 0.0) + sign * j.cores

    def _account(self, m: SimMachine) -> None:
        """Add the time since the machine's last change to its busy and used figures."""
        if m.jobs:
            dt = self.now - m.mark
            m.busy_s += dt
            m.used_core_s += (m.offer.cores - m.free_cores) * dt
        m.mark = self.now

    def _run(self, j: SimJob, m: SimMachine) -> None:
        self._account(m)
        if not j.starts:
            j.first_machine = m.name
        j.starts.append(self.now)
        j.machine = m.name
        j.attempt += 1
        m.jobs.add(j.trace.id)
        m.free_slots -= 1
        m.free_cores -= j.cores
        m.free_mem -= j.memory_mb
        m.idle_since = None
        m.largest_job = max(m.largest_job, (j.cores, j.memory_mb))
        m.busy_until = max(m.busy_until, self._ends(j))
        self._hold(j, 1)
        self._push(self.now + j.trace.run, END, f"{j.trace.id}:{j.attempt}")
        if j.predicted < j.trace.run:  # (only to spare an event that would find it ended)
            self._push(self._ends(j), OVERRUN, f"{j.trace.id}:{j.attempt}")

    def _release(self, j: SimJob, m: SimMachine) -> None:
        self._account(m)
        m.jobs.discard(j.trace.id)
        m.free_slots += 1
        m.free_cores += j.cores
        m.free_mem += j.memory_mb
        if not m.jobs:
            m.idle_since = self.now
        if self._ends(j) >= m.busy_until:
            m.busy_until = busy_until(self._running(m))
        self._hold(j, -1)
        used = j.cores * (self.now - j.starts[-1])
        self.ledger.charge(OWNER, j.trace.user, used, self.now)
        self.ledger.charge(GROUP, j.trace.group, used, self.now)
        j.machine = None

    def _job_end(self, j: SimJob, attempt: int) -> None:
        if attempt != j.attempt or j.machine is None:
            return  # a run that was interrupted meanwhile
        m = self.machines[j.machine]
        self._release(j, m)
        if self.runtimes == "predicted":  # what the scheduler learns as jobs end
            self.history.record(j.tq, j.trace.user, self.now - j.starts[-1])
            self.learned[j.trace.user] = self.learned.get(j.trace.user, 0) + 1
        j.end = self.now
        j.ends += 1
        self.done += 1
        self._has_room(m)

    # machines ----------------------------------------------------------------------------
    def _start(self, o: Offer, t: float, name: str | None = None) -> None:
        if name is None:
            self.last_seq += 1
            name = f"{self.spec.name}-{self.last_seq:04d}"
        m = SimMachine(name, o, t, free_slots=o.n_slots, free_cores=o.cores,
                       free_mem=o.memory_mb)
        self.machines[name] = self.live[name] = m
        self._push(t + self._boot_time(o), UP, name)

    def _boot_time(self, o: Offer) -> float:
        for pattern, secs in self.opts.boot_times:
            if fnmatch.fnmatchcase(o.pool, pattern):
                return secs
        return self.opts.boot_time

    def _end_machine(self, m: SimMachine, why: str) -> None:
        for job_id in sorted(m.jobs):
            j = self.jobs[job_id]
            m.lost_core_s += j.cores * (self.now - j.starts[-1])
            self._release(j, m)
            j.attempt += 1  # its pending end event is void
            self.rescheduled += 1
            self._enqueue(j)
        if self.opts.boot_times and m.up_at is not None:  # what the scheduler is told
            pool = m.offer.pool
            self.ran[pool] = self.ran.get(pool, 0.0) + (self.now - m.up_at) / 3600
            self.lost[pool] = self.lost.get(pool, 0) + int(m.interrupted)
        m.state = M.STOPPED
        m.ended = self.now
        self.live.pop(m.name, None)
        m.version += 1

    def _prices(self) -> dict[str, float]:
        return {k: s.at(self.now) for k, s in self.series.items()}

    def _quiet(self) -> bool:
        """Whether decide() would decide nothing new now, so the tick can be skipped: no
        machine booting (its timeout depends on the time) and none idle long enough to stop;
        and either nothing waits, nothing drains and the headroom is there (then nothing is
        started, stopped or drained), or nothing changed since a tick that decided
        nothing."""
        slowest = max([self.opts.boot_time, *(s for _, s in self.opts.boot_times)])
        if slowest >= self.spec.boot_timeout:
            return False
        due = self.now - self.spec.idle_timeout
        for m in self.live.values():
            if m.state != M.RUNNING or (not m.jobs and (m.draining or (
                    m.idle_since is not None and m.idle_since <= due))):
                return False
        if not self.n_waiting and not self.spec.drain_budget:
            if not self.spec.headroom:
                return True
            # headroom: decide() starts machines only while fewer cores are free than wanted
            live = spare = 0
            for m in self.live.values():
                live += m.offer.cores
                if not m.draining and m.free_slots > 0:
                    spare += m.free_cores
            if spare >= math.ceil(self.spec.headroom * live):
                return True
        return not self.dirty

    def _tick(self) -> None:
        if self.static is not None:
            return
        if not self.backoff.ready(self.now):
            self.dirty = True  # backing off after a refusal (blocklist off)
            return
        if self._quiet():
            return
        for _ in range(8):  # refused launches: decided again at once (the live loop's next tick)
            if not self._decide():
                break

    def _decide(self) -> bool:
        """One decision and what it does; whether a launch was refused and the endpoint may
        decide again (its offer blocked)."""
        views = [MachineView(m.name, self.spec.name, m.state, m.created,
                             m.offer.n_slots, len(m.jobs), m.free_cores, m.free_mem,
                             m.idle_since, self.now, True, m.offer.pool, m.draining,
                             m.busy_until if m.jobs else 0.0)
                 for m in self.live.values()]
        queues = [replace(self._view(i), waiting=len(h), oldest=self._oldest(i))
                  for i, h in self.waiting.items()]
        measured = tuple(
            Delivery(p, len(self.boots.get(p, ())),
                     sum(self.boots.get(p, ())) / max(len(self.boots.get(p, ())), 1),
                     self.never.get(p, 0), self.ran.get(p, 0.0), self.lost.get(p, 0))
            for p in sorted(set(self.boots) | set(self.never)))
        d = decide(self.spec, queues, views, self.now, self.last_seq, prices=self._prices(),
                   budget=Budget(), refusals=tuple(self.blocked.values()), delivery=measured)
        self.dirty = d.changes or d.drains_differently(views) or any(
            r.blocks(self.now) for r in self.blocked.values())
        if any("not covered" in r for r in d.reasons) and (
                not self.short_ticks or self.short_ticks[-1] != self.now):
            self.short_ticks.append(self.now)
            self.short_causes.append(_short_cause(d.reasons))
        for r in d.remove:
            m = self.live.get(r.name)
            if m is not None:
                if r.to == M.FAILED and self.opts.boot_times:  # its pilot never came
                    self.never[m.offer.pool] = self.never.get(m.offer.pool, 0) + 1
                self._end_machine(m, r.reason)
        drain = set(d.drain)
        for m in self.live.values():
            if m.draining != (m.name in drain):
                m.draining = m.name in drain
                self._has_room(m)
        refused = False
        for launch in d.launches:
            self.last_seq = max(self.last_seq, int(launch.name.rsplit("-", 1)[1]))
            offer = next(o for o in self.spec.offers if o.pool == launch.pool)
            if self._refuses(offer):
                refused = True
                self.refused += 1
                o = self.opts
                self.blocked[offer.pool] = refusals.refused(
                    self.blocked.get(offer.pool), offer.pool, "capacity", "sold out", self.now,
                    o.refusal_ttl, o.refusal_ttl_max)
                continue
            self.blocked.pop(offer.pool, None)
            self._start(offer, self.now, launch.name)
        if not self.opts.blocklist:
            self.blocked.clear()  # before issue 24: the decision knew nothing of refusals,
            # and the endpoint backed off (5 s doubling up to 5 min), reset by a success
            self.backoff = self.backoff.failed(self.now) if refused else (
                Backoff() if d.launches else self.backoff)
            return False
        return refused

    def _refuses(self, o: Offer) -> bool:
        """Whether the cloud refuses a launch in this offer's pool now."""
        for pool, a, b in self.opts.refusals:
            if pool == o.pool and a <= self.now < b:
                return True
        return bool(self.opts.refusal_rate) and self.rng.random() < self.opts.refusal_rate

    def _oldest(self, q: int) -> float | None:
        """When the task queue's first waiting job was submitted (the ladder's deadline)."""
        h = self.waiting.get(q)
        return self.jobs[h[0]].trace.submit if h else None

    def _sample(self) -> None:
        by_type: dict[str, int] = {}
        spend = 0.0
        prices = self._prices()
        for m in self.live.values():
            by_type[m.offer.machine_type] = by_type.get(m.offer.machine_type, 0) + 1
            spend += m.offer.price(prices) or 0.0
        running = sum(len(m.jobs) for m in self.live.values())
        self.samples.append(Sample(self.now, self.n_waiting, running, by_type, spend))
