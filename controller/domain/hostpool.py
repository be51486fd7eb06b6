"""The scheduler's decision for an SSH endpoint: a pool of hosts that exist whether or not they
run pilots. A host's slots cost nothing while idle, so pilots are started on hosts when
matching work waits and stopped after the idle timeout; hosts that fail are retried with
back-off. A pure function of (hosts as recorded, queue state, endpoint config, now), like
domain.scheduling.decide(), whose Decision it returns so the API shows both alike."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.domain.demand import free_share
from controller.domain.fleet import health
from controller.domain.machines import (
    DEPLOYED_STATES,
    RETRY_STATES,
    STARTING_STATES,
    WANTED_STATES,
    MachineState,
)
from controller.domain.matching import SlotOffer, jobs_per_machine, why_not
from controller.domain.scheduling import Decision, EndpointSpec, Removal
from controller.domain.taskqueues import TaskQueue

M = MachineState


class Membership(StrEnum):
    """A host's place in its endpoint (kept apart from its machine's lifecycle)."""

    JOINING = "joining"  # added; becomes a member once it answers on SSH (facts gathered)
    MEMBER = "member"
    LEFT = "left"  # removed; its pilot is stopped


def host_machine(endpoint: str, host: str) -> str:
    """The name of a host's machine."""
    return f"{endpoint}-{host}"


@dataclass(frozen=True)
class Host:
    """A host of an SSH endpoint as the store keeps it."""

    endpoint: str
    name: str
    machine: str  # host_machine(endpoint, name)
    address: str
    port: int
    slots: int | None  # None: the endpoint's
    cores: int | None  # overrides; None: its facts
    memory_mb: int | None
    source: str  # config, api, cloud:<endpoint>
    membership: Membership
    joined_at: float
    updated_at: float
    facts: Mapping[str, Any] | None  # what it reported over SSH (cores, memory, Python...)
    failures: int
    last_failure_at: float | None
    last_error: str | None
    host_key: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Host:
        return cls(
            endpoint=row["endpoint"], name=row["name"], machine=row["machine"],
            address=row["address"], port=row["port"], slots=row["slots"], cores=row["cores"],
            memory_mb=row["memory_mb"], source=row["source"],
            membership=Membership(row["membership"]), joined_at=row["joined_at"],
            updated_at=row["updated_at"],
            facts=json.loads(row["facts"]) if row["facts"] else None,
            failures=int(row["failures"] or 0), last_failure_at=row["last_failure_at"],
            last_error=row["last_error"], host_key=row["host_key"])


@dataclass(frozen=True)
class Backoff:
    """Waits between retries of a failing host: first, doubling, capped."""

    first: float = 10.0
    cap: float = 600.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self.first * 2 ** (failures - 1), self.cap))


@dataclass(frozen=True)
class HostView:
    """What the scheduler knows of one host of the pool at decision time."""

    name: str  # the host's machine name: <endpoint>-<host>
    membership: Membership
    state: MachineState | None  # None: no machine yet (joining)
    since: float  # when its machine (or its membership) entered its state
    slots: int
    shape: SlotOffer | None = None  # what it offers (facts, or overrides); None: not known yet
    busy_slots: int = 0
    idle_since: float | None = None
    last_seen: float | None = None
    failures: int = 0
    last_failure_at: float | None = None


@dataclass(frozen=True)
class HostDecision:
    decision: Decision  # starts (hosts to deploy pilots on), removals, reasons
    probe: tuple[str, ...] = ()  # joining hosts to reach and gather facts from
    retry: tuple[str, ...] = ()  # lost, unreachable or failed hosts to reach and clean up


def _due(h: HostView, now: float, backoff: Backoff) -> bool:
    if not h.failures or h.last_failure_at is None:
        return True
    return now >= h.last_failure_at + backoff.delay(h.failures)


def _absorb(h: HostView, waiting: dict[int, float], queues: Sequence[TaskQueue],
            fraction: float) -> float:
    """Let `fraction` of host h's capacity take waiting jobs that fit it (in place); return
    how many jobs it took."""
    if h.shape is None or fraction <= 0:
        return 0.0
    took = 0.0
    for q in queues:
        left = waiting.get(q.id, 0.0)
        if left <= 0 or why_not(q.requirements, h.shape) is not None:
            continue
        per = jobs_per_machine(q.requirements, h.shape, h.slots)
        if per <= 0:
            continue
        n = min(left, fraction * per)
        waiting[q.id] = left - n
        fraction -= n / per
        took += n
        if fraction <= 1e-9:
            break
    return took


def decide_hosts(spec: EndpointSpec, queues: Sequence[TaskQueue], hosts: Sequence[HostView],
                 now: float, backoff: Backoff = Backoff()) -> HostDecision:
    """Decide what each host of an SSH endpoint should do now.

    1. Record what the world says: a running host whose pilot is silent for `lost_after` is
       lost; one whose pilot has not registered within `boot_timeout` has failed; a host that
       left has its pilot stopped.
    2. Hosts that need SSH: joining hosts are probed; lost, unreachable and failed hosts are
       retried (reached and cleaned up), each once its back-off has passed.
    3. Waiting jobs that fit are absorbed by the free slots of hosts with pilots (busy ones
       first), then pilots are started on idle hosts (fewest failures, then name) while jobs
       that fit them are left, up to max_starts_per_cycle.
    4. Hosts whose pilot has been idle for `idle_timeout` and that took no waiting job are
       stopped, longest idle first.
    """
    removals: list[Removal] = []
    reasons: list[str] = []
    probe, retry = [], []
    for h in hosts:
        if h.membership == Membership.LEFT:
            if h.state in WANTED_STATES:
                removals.append(Removal(h.name, M.STOPPING, "the host left the endpoint"))
            continue
        if h.membership == Membership.JOINING:
            if _due(h, now, backoff):
                probe.append(h.name)
            continue
        sick = health(h.name, h.state, h.last_seen,
                      h.since if h.state in STARTING_STATES else None, now, spec.lost_after,
                      spec.boot_timeout)
        if sick is not None:
            removals.append(sick)
        elif h.state in RETRY_STATES and _due(h, now, backoff):
            retry.append(h.name)
        elif h.state == M.STOPPING and now - h.since > spec.boot_timeout and _due(h, now, backoff):
            retry.append(h.name)  # a stop that never finished (say, the controller died)
    gone = {r.name for r in removals}

    waiting = {q.id: float(q.waiting) for q in queues if q.waiting > 0}
    demand = 0.0
    for q in queues:
        if q.waiting > 0:
            r = why_not(q.requirements, spec.shape)
            if r is not None and not any(h.shape is not None and why_not(q.requirements, h.shape)
                                         is None for h in hosts):
                reasons.append(f"task queue {q.id} ({q.waiting} waiting) cannot run here: {r}")
            else:
                demand += q.waiting
    members = [h for h in hosts if h.membership == Membership.MEMBER and h.name not in gone]
    # free slots of hosts with pilots take waiting work first: busy hosts, then the most
    # recently busy idle ones, so that the longest idle host is the one left to stop
    up = sorted((h for h in members if h.state in WANTED_STATES),
                key=lambda h: (not h.busy_slots, -(h.idle_since or now)))
    took: dict[str, float] = {}
    for h in up:
        took[h.name] = _absorb(h, waiting, queues, free_share(h.state, h.slots, h.busy_slots))

    start: list[str] = []
    idle_hosts = sorted((h for h in members if h.state == M.STOPPED and h.shape is not None),
                        key=lambda h: (h.failures, h.name))
    for h in idle_hosts:
        if sum(waiting.values()) <= 1e-9:
            break
        if len(start) >= spec.max_starts_per_cycle:
            reasons.append(f"more hosts could take waiting work; starting {len(start)} "
                           f"(max_starts_per_cycle {spec.max_starts_per_cycle})")
            break
        if _absorb(h, waiting, queues, 1.0) > 0:
            start.append(h.name)
    if start:
        reasons.append(f"starting pilots on {len(start)} host(s) for {demand:.0f} waiting jobs")
    left = sum(waiting.values())
    if left > 1e-9 and not start and not any(h.state == M.STOPPED for h in idle_hosts):
        reasons.append(f"{left:.0f} waiting jobs that fit no free host slot")

    for h in sorted(up, key=lambda h: h.idle_since or now):
        if (h.state == M.RUNNING and not h.busy_slots and h.idle_since is not None
                and now - h.idle_since >= spec.idle_timeout and took.get(h.name, 0) <= 1e-9):
            removals.append(Removal(h.name, M.STOPPING,
                                    f"idle for {now - h.idle_since:.0f}s "
                                    f"(>= {spec.idle_timeout:.0f}s)"))
    gone = {r.name for r in removals}
    wanted = tuple(sorted([h.name for h in up if h.name not in gone] + start))
    decision = Decision(spec.name, tuple(start), tuple(removals), wanted,
                        demand / max(spec.slots, 1), tuple(reasons))
    return HostDecision(decision, tuple(probe), tuple(retry))


def take_down(hd: HostDecision, hosts: Sequence[HostView], by: str) -> HostDecision:
    """An SSH endpoint an operator took down (`cloudpilot down`): no pilot starts, every
    running one is stopped (hosts already found lost or failed keep that verdict). Joining
    and failed hosts are still reached, so the endpoint is ready when it comes up."""
    d = hd.decision
    gone = {r.name for r in d.remove}
    stop = tuple(Removal(h.name, M.STOPPING, f"the endpoint is down ({by})") for h in hosts
                 if h.state in DEPLOYED_STATES and h.name not in gone)
    down = Decision(d.endpoint, (), d.remove + stop, (), d.demand,
                    (f"the endpoint is down: taken down by {by}",))
    return HostDecision(down, hd.probe, hd.retry)
