"""Endpoints, machines, task queues and a summary: what the operator watches."""

from __future__ import annotations

import time
from collections import Counter

from fastapi import APIRouter, Request

from controller.api.deps import SettingsDep, StoreDep, UserAuth, sees
from controller.api.jobs import registered
from controller.api.responses import (
    DecisionOut,
    EndpointEventOut,
    EndpointOut,
    Health,
    MachineOut,
    RefusalOut,
    ShareOut,
    SharesOut,
    StateEventOut,
    SummaryOut,
    TaskQueueOut,
    WorkOut,
)
from controller.domain.matching import waiting_reason
from controller.domain.taskqueues import standings

router = APIRouter(prefix="/api/v1", tags=["info"])


@router.get("/endpoints", response_model=list[EndpointOut])
def endpoints(request: Request, store: StoreDep, p: UserAuth) -> list[EndpointOut]:
    """Each endpoint: driver, state, machines by state, the last scheduling decision and the
    slow work under way (an apply, an Ansible run)."""
    reconciler = request.app.state.reconciler
    by_state = Counter((m.endpoint, m.state.value) for m in store.machines.find())
    now = time.time()
    refusals = store.refusals.find()
    out = []
    for ep in store.endpoints.find():
        d = reconciler.last.get(ep.name) if reconciler else None
        work = reconciler.work(ep.name) if reconciler else None
        out.append(EndpointOut(
            name=ep.name, driver=ep.driver, state=ep.state.value, message=ep.message,
            config=dict(ep.config),
            machines={s: n for (e, s), n in by_state.items() if e == ep.name},
            down_by=ep.down_by, retry_at=ep.backoff.not_before or None,
            events=[EndpointEventOut(**e) for e in store.endpoints.events(ep.name, 3)],
            last_decision=None if d is None else DecisionOut.of(d),
            work=None if work is None else WorkOut(what=work[0], since=work[1]),
            refusals=[RefusalOut(**r.to_dict(), blocked=r.blocks(now))
                      for e, r in refusals if e == ep.name]))
    return out


@router.get("/machines", response_model=list[MachineOut])
def machines(store: StoreDep, p: UserAuth, endpoint: str | None = None,
             all: bool = False) -> list[MachineOut]:
    """Machines (live ones unless all=true) with their running job count."""
    busy = store.jobs.busy_by_machine()
    return [MachineOut.of(m, busy.get(m.name, 0))
            for m in store.machines.find(endpoint, live=not all)]


@router.get("/machines/{name}/events", response_model=list[StateEventOut])
def machine_events(name: str, store: StoreDep, p: UserAuth) -> list[StateEventOut]:
    """Every state change of the machine (and every Ansible task run on it), oldest first."""
    store.machines.get(name)
    return [StateEventOut(**e) for e in store.machines.events(name)]


@router.get("/taskqueues", response_model=list[TaskQueueOut])
def taskqueues(store: StoreDep, settings: SettingsDep, p: UserAuth) -> list[TaskQueueOut]:
    """Task queues with waiting jobs: requirements, owner, priority, count, and why a queue
    no endpoint can serve is stuck. Users see their own; admins all."""
    shapes = [e.shape() for e in settings.endpoints]
    machines = registered(store, settings)
    return [
        TaskQueueOut(id=q.id, owner=q.owner, group=q.group, priority=q.priority,
                     waiting=q.waiting, requirements=q.requirements.to_dict(),
                     unmatchable=waiting_reason(q.requirements, shapes, machines))
        for q in sorted(store.jobs.queue_snapshot(), key=lambda q: q.id)
        if sees(p, q.owner)
    ]


@router.get("/summary", response_model=SummaryOut)
def summary(store: StoreDep, p: UserAuth) -> SummaryOut:
    """Jobs by state (yours, or all for an admin) and live machines by state."""
    jobs = store.jobs.counts(None if p.is_admin else p.owner)
    machines = Counter(m.state.value for m in store.machines.find(live=True))
    return SummaryOut(jobs=jobs, machines=dict(machines))


@router.get("/health", tags=["health"], response_model=Health)
def health() -> Health:
    return Health(status="ok")


@router.get("/shares", response_model=SharesOut)
def shares(store: StoreDep, settings: SettingsDep, p: UserAuth) -> SharesOut:
    """Fair share: each group's and owner's share, recent usage (decayed core-hours), cores
    held now and effective priority (load: the lowest is served first; rank 1 is next)."""
    fs = store.usage.standing(settings.fair_share_by, store.tokens.shares(),
                              settings.group_shares, time.time())
    groups_of = {str(u["name"]): str(u["group"]) for u in store.tokens.users()}
    rows = [ShareOut(kind=s.kind, name=s.name, group=s.group, share=s.share,
                     usage_core_hours=round(s.usage / 3600, 4), held_cores=s.held,
                     load=round(s.load, 6), rank=s.rank)
            for s in standings(fs, groups_of)]
    return SharesOut(by=settings.fair_share_by, half_life=fs.half_life, shares=rows)
