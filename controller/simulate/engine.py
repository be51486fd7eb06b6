"""The discrete-event replay of one policy: a virtual clock, jobs arriving at their submit
times, a simulated fleet, and the controller's own code for every decision:

- task queues and fair share: controller.domain.taskqueues (TaskQueue, fair_share_order),
- matching: controller.domain.matching.fits, the same check the store's matcher makes, with
  the same order (fair share, then priority, then the oldest job),
- the scheduler: controller.domain.scheduling.decide, called every `tick` seconds exactly as
  controller/reconcile/loop.py calls it (task queue snapshot, machine views, spot prices now).

The simulator adds only what the cloud and the pilots would do: machines come up after
`boot_time`, jobs run for their traced run time, spot machines are interrupted when the
market price passes their max price (their jobs go back to the queue, as `interrupted`).
A waiting job goes to the fullest machine with room (pilots of busy machines ask first),
so that emptied machines can go away."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer, fits
from controller.domain.pricing import Offer, PriceSeries
from controller.domain.scheduling import Budget, EndpointSpec, decide
from controller.domain.taskqueues import TaskQueue, fair_share_order
from controller.simulate.trace import TraceJob

M = MachineState
UP, END, INTERRUPT, TICK = 0, 1, 2, 3  # event kinds, in the order they act at one instant


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
    fair_share_by: str = "owner"
    sample_every: float = 600.0


class Simulation:
    """One policy over one trace. `static` is a fixed fleet (offer, count) that never changes;
    otherwise `decide` runs every tick with `spec`."""

    def __init__(self, policy: str, spec: EndpointSpec, jobs: list[TraceJob],
                 series: dict[str, PriceSeries], opts: SimOptions,
                 static: tuple[Offer, int] | None = None,
                 progress: Callable[[float, int], None] | None = None) -> None:
        self.policy = policy
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
        self.free: dict[str, SimMachine] = {}  # running, with a free slot
        self.usage: dict[str, int] = {}
        self.events: list[tuple[float, int, int, str]] = []
        self.seq = itertools.count()
        self.last_seq = 0
        self.now = 0.0
        self.done = 0
        self.interruptions = 0
        self.rescheduled = 0
        self.samples: list[Sample] = []

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
        deadline = max((j.trace.submit + j.trace.run for j in self.trace), default=0.0) + 30 * 86400
        while self.done < total and self.now <= deadline:
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
            if self.n_waiting and self.free:
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
                       self.now, self.series)

    def _event(self, kind: int, what: str) -> None:
        if kind == TICK:
            self._tick()
            if self.done < len(self.trace):
                self._push(self.now + self.opts.tick, TICK, "")
        elif kind == END:
            job_id, attempt = what.split(":")
            self._job_end(self.jobs[int(job_id)], int(attempt))
        elif kind == UP:
            m = self.machines[what]
            if m.state == M.BOOTING:
                m.state, m.up_at, m.idle_since = M.RUNNING, self.now, self.now
                self.free[m.name] = m
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
        heapq.heappush(self.waiting.setdefault(j.tq, []), j.trace.id)
        self.n_waiting += 1

    def _dispatch(self) -> None:
        """Free slots ask for work, the fullest machines first."""
        for m in sorted(self.free.values(), key=lambda m: (m.free_cores, m.name)):
            self._match(m)
            if not self.n_waiting:
                return

    def _match(self, m: SimMachine) -> None:
        """What the store's matcher does for one pilot: while it has room, the best job that
        fits, by fair share, then priority, then age."""
        tags = self.spec.shape.tags
        while m.free_slots > 0 and self.n_waiting:
            offer = SlotOffer(self.spec.name, m.free_cores, m.free_mem, tags,
                              self.spec.shape.max_runtime, m.offer.spot)
            cands = [self.queues[q] for q, h in self.waiting.items()
                     if h and fits(self.queues[q].requirements, offer)]
            if not cands:
                break
            q = fair_share_order(cands, self.usage, self.opts.shares,
                                 self.opts.fair_share_by)[0]
            job = self.jobs[heapq.heappop(self.waiting[q.id])]
            if not self.waiting[q.id]:
                del self.waiting[q.id]
            self.n_waiting -= 1
            self._run(job, m)
        if m.free_slots <= 0 or m.free_cores <= 0:
            self.free.pop(m.name, None)

    def _who(self, j: SimJob) -> str:
        return j.trace.group if self.opts.fair_share_by == "group" else j.trace.user

    def _run(self, j: SimJob, m: SimMachine) -> None:
        j.starts.append(self.now)
        j.machine = m.name
        j.attempt += 1
        m.jobs.add(j.trace.id)
        m.free_slots -= 1
        m.free_cores -= j.cores
        m.free_mem -= j.memory_mb
        m.idle_since = None
        m.largest_job = max(m.largest_job, (j.cores, j.memory_mb))
        who = self._who(j)
        self.usage[who] = self.usage.get(who, 0) + 1
        self._push(self.now + j.trace.run, END, f"{j.trace.id}:{j.attempt}")

    def _release(self, j: SimJob, m: SimMachine) -> None:
        m.jobs.discard(j.trace.id)
        m.free_slots += 1
        m.free_cores += j.cores
        m.free_mem += j.memory_mb
        if not m.jobs:
            m.idle_since = self.now
        who = self._who(j)
        self.usage[who] -= 1
        j.machine = None

    def _job_end(self, j: SimJob, attempt: int) -> None:
        if attempt != j.attempt or j.machine is None:
            return  # a run that was interrupted meanwhile
        m = self.machines[j.machine]
        self._release(j, m)
        j.end = self.now
        j.ends += 1
        self.done += 1
        if m.state == M.RUNNING:
            self.free[m.name] = m

    # machines ----------------------------------------------------------------------------
    def _start(self, o: Offer, t: float, name: str | None = None) -> None:
        if name is None:
            self.last_seq += 1
            name = f"{self.spec.name}-{self.last_seq:04d}"
        m = SimMachine(name, o, t, free_slots=o.n_slots, free_cores=o.cores,
                       free_mem=o.memory_mb)
        self.machines[name] = self.live[name] = m
        self._push(t + self.opts.boot_time, UP, name)

    def _end_machine(self, m: SimMachine, why: str) -> None:
        for job_id in sorted(m.jobs):
            j = self.jobs[job_id]
            self._release(j, m)
            j.attempt += 1  # its pending end event is void
            self.rescheduled += 1
            self._enqueue(j)
        m.state = M.STOPPED
        m.ended = self.now
        self.live.pop(m.name, None)
        self.free.pop(m.name, None)

    def _prices(self) -> dict[str, float]:
        return {k: s.at(self.now) for k, s in self.series.items()}

    def _tick(self) -> None:
        if self.static is not None:
            return
        views = [MachineView(m.name, self.spec.name, m.state, m.created,
                             m.offer.n_slots, len(m.jobs), m.free_cores, m.free_mem,
                             m.idle_since, self.now, True, m.offer.pool)
                 for m in self.live.values()]
        queues = [TaskQueue(q.id, q.requirements, q.owner, q.group, q.priority, len(h))
                  for q, h in ((self.queues[i], h) for i, h in self.waiting.items())]
        d = decide(self.spec, queues, views, self.now, self.last_seq, prices=self._prices(),
                   budget=Budget())
        for r in d.remove:
            m = self.live.get(r.name)
            if m is not None:
                self._end_machine(m, r.reason)
        for launch in d.launches:
            self.last_seq = max(self.last_seq, int(launch.name.rsplit("-", 1)[1]))
            offer = next(o for o in self.spec.offers if o.pool == launch.pool)
            self._start(offer, self.now, launch.name)

    def _sample(self) -> None:
        by_type: dict[str, int] = {}
        spend = 0.0
        prices = self._prices()
        for m in self.live.values():
            by_type[m.offer.machine_type] = by_type.get(m.offer.machine_type, 0) + 1
            spend += m.offer.price(prices) or 0.0
        running = sum(len(m.jobs) for m in self.live.values())
        self.samples.append(Sample(self.now, self.n_waiting, running, by_type, spend))
