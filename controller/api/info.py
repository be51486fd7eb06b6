"""Endpoints, machines, task queues and a summary: what the operator watches."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from controller.api.deps import SettingsDep, StoreDep, UserAuth, sees
from controller.domain.matching import unmatchable_reason

router = APIRouter(prefix="/api/v1", tags=["info"])


@router.get("/endpoints")
def endpoints(request: Request, store: StoreDep, settings: SettingsDep,
              p: UserAuth) -> list[dict[str, Any]]:
    """Each endpoint: driver, state, machines by state, and the last scheduling decision."""
    machines = store.machines.find()
    last = request.app.state.reconciler.last if request.app.state.reconciler else {}
    out = []
    for ep in store.machines.endpoints():
        by_state: dict[str, int] = {}
        for m in machines:
            if m["endpoint"] == ep["name"]:
                by_state[m["state"]] = by_state.get(m["state"], 0) + 1
        d = last.get(ep["name"])
        out.append({
            "name": ep["name"], "driver": ep["driver"], "state": ep["state"],
            "message": ep["message"], "config": ep["config"], "machines": by_state,
            "down_by": ep.get("down_by"), "retry_at": ep.get("retry_at"),
            "events": store.plans.endpoint_events(ep["name"], 3),
            "last_decision": None if d is None else {
                "start": list(d.start), "demand": round(d.demand, 2),
                "remove": [{"name": r.name, "to": r.to.value, "reason": r.reason}
                           for r in d.remove],
                "reasons": list(d.reasons),
            },
        })
    return out


@router.get("/machines")
def machines(store: StoreDep, p: UserAuth, endpoint: str | None = None,
             all: bool = False) -> list[dict[str, Any]]:
    """Machines (live ones unless all=true) with their running job count."""
    busy = store.jobs.busy_by_machine()
    rows = store.machines.find(endpoint, live=not all)
    return [dict(m, jobs=busy.get(m["name"], 0)) for m in rows]


@router.get("/machines/{name}/events")
def machine_events(name: str, store: StoreDep, p: UserAuth) -> list[dict[str, Any]]:
    store.machines.get(name)
    return store.machines.events(name)


@router.get("/taskqueues")
def taskqueues(store: StoreDep, settings: SettingsDep, p: UserAuth) -> list[dict[str, Any]]:
    """Task queues with waiting jobs: requirements, owner, priority, count, and why a queue
    no endpoint can serve is stuck. Users see their own; admins all."""
    shapes = [e.shape() for e in settings.endpoints]
    return [
        {"id": q.id, "owner": q.owner, "group": q.group, "priority": q.priority,
         "waiting": q.waiting, "requirements": q.requirements.to_dict(),
         "unmatchable": unmatchable_reason(q.requirements, shapes)}
        for q in sorted(store.jobs.queue_snapshot(), key=lambda q: q.id)
        if sees(p, q.owner)
    ]


@router.get("/summary")
def summary(store: StoreDep, p: UserAuth) -> dict[str, Any]:
    """Jobs by state (yours, or all for an admin) and live machines by state."""
    jobs = store.jobs.counts(None if p.is_admin else p.owner)
    machines: dict[str, int] = {}
    for m in store.machines.find(live=True):
        machines[m["state"]] = machines.get(m["state"], 0) + 1
    return {"jobs": jobs, "machines": machines}


@router.get("/health", tags=["health"])
def health() -> dict[str, str]:
    return {"status": "ok"}
