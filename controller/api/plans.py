"""Plans: review an endpoint's proposed changes, approve them, bring an endpoint up or down.

No infrastructure work happens here: an approval (or `up`, `down`) records a wish (one
transaction, in controller/services/plans.py) and wakes the loop, whose endpoint worker
applies it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from controller.api.deps import AdminAuth, SettingsDep, StoreDep, UserAuth
from controller.api.responses import (
    DownOut,
    EndpointEventOut,
    PlanDetailOut,
    PlanOut,
    StateEventOut,
    UpOut,
)
from controller.domain.plans import OPEN_STATES, PlanState
from controller.services import plans as service

router = APIRouter(prefix="/api/v1", tags=["plans"])

StateName = Literal["pending", "approved", "applying", "applied", "failed", "superseded",
                    "open"]


def _wake(request: Request) -> None:
    request.app.state.notifier.fire()


@router.get("/plans", response_model=list[PlanOut])
def plans(store: StoreDep, settings: SettingsDep, p: UserAuth, endpoint: str | None = None,
          state: StateName | None = None,
          limit: int = Query(50, ge=1, le=1000)) -> list[PlanOut]:
    """Plans, newest first (state=open: pending, approved and applying ones)."""
    if endpoint is not None:
        service.configured(settings, endpoint)
    states = sorted(OPEN_STATES) if state == "open" else ([PlanState(state)] if state else [])
    return [PlanOut.of(pl) for pl in store.plans.find(endpoint, states, limit)]


@router.get("/plans/{plan_id}", response_model=PlanDetailOut)
def plan(plan_id: int, store: StoreDep, p: UserAuth) -> PlanDetailOut:
    """One plan with its history."""
    return PlanDetailOut(**store.plans.get(plan_id).to_dict(),
                         events=[StateEventOut(**e) for e in store.plans.events(plan_id)])


@router.post("/plans/{plan_id}/approve", response_model=PlanOut)
def approve(plan_id: int, request: Request, store: StoreDep, p: AdminAuth) -> PlanOut:
    """Approve a pending plan; the loop applies it at its next tick (409 if not pending)."""
    out = PlanOut.of(service.approve(store, plan_id, p.operator))
    _wake(request)
    return out


@router.get("/endpoints/{name}/events", response_model=list[EndpointEventOut])
def endpoint_events(name: str, store: StoreDep, settings: SettingsDep, p: UserAuth,
                    limit: int = Query(50, ge=1, le=1000)) -> list[EndpointEventOut]:
    """What happened to the endpoint, newest first: driver failures with their message,
    recoveries, down and up."""
    return [EndpointEventOut(**e)
            for e in store.endpoints.events(service.configured(settings, name), limit)]


@router.post("/endpoints/{name}/up", response_model=UpOut)
def up(name: str, request: Request, store: StoreDep, settings: SettingsDep,
       p: AdminAuth) -> UpOut:
    """Apply the endpoint's wanted state now: end a `down`, drop any back-off, and approve
    its pending plan (or the next one the loop makes)."""
    r = service.up(store, settings, name, p.operator)
    _wake(request)
    return UpOut(endpoint=r.endpoint, plan=None if r.plan is None else PlanOut.of(r.plan),
                 message=r.message)


@router.post("/endpoints/{name}/down", response_model=DownOut)
def down(name: str, request: Request, store: StoreDep, settings: SettingsDep,
         p: AdminAuth) -> DownOut:
    """Take the endpoint down: every machine it manages is removed and none is started until
    `up`. Its open plans are superseded; the loop makes and applies the plan that removes
    the machines (the operator's `down` is its approval)."""
    r = service.down(store, settings, name, p.operator)
    _wake(request)
    return DownOut(endpoint=r.endpoint, down_by=r.down_by, superseded=r.superseded,
                   message=r.message)
