"""Plans: review an endpoint's proposed changes, approve them, bring an endpoint up or down.

No infrastructure work happens here: an approval (or `up`, `down`) records a wish and wakes the
loop, which applies it at its next tick."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from controller.api.deps import AdminAuth, SettingsDep, StoreDep, UserAuth
from controller.auth import Principal
from controller.config.settings import Settings
from controller.domain.plans import Backoff, PlanState
from controller.errors import NotFound

router = APIRouter(prefix="/api/v1", tags=["plans"])

StateName = Literal["pending", "approved", "applied", "failed", "superseded", "open"]


def who(p: Principal) -> str:
    """How plans name the operator behind an approval, `up` or `down`."""
    return f"{p.role.value} token {p.token_id}" + (f" ({p.owner})" if p.owner else "")


def _endpoint(settings: Settings, name: str) -> str:
    if settings.endpoint(name) is None:
        raise NotFound(f"no endpoint {name}")
    return name


def _wake(request: Request) -> None:
    request.app.state.notifier.fire()


@router.get("/plans")
def plans(store: StoreDep, settings: SettingsDep, p: UserAuth, endpoint: str | None = None,
          state: StateName | None = None,
          limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Plans, newest first (state=open: pending and approved ones)."""
    if endpoint is not None:
        _endpoint(settings, endpoint)
    states = [PlanState.PENDING, PlanState.APPROVED] if state == "open" else (
        [PlanState(state)] if state else [])
    return [pl.to_dict() for pl in store.plans.find(endpoint, states, limit)]


@router.get("/plans/{plan_id}")
def plan(plan_id: int, store: StoreDep, p: UserAuth) -> dict[str, Any]:
    """One plan with its history."""
    return dict(store.plans.get(plan_id).to_dict(), events=store.plans.events(plan_id))


@router.post("/plans/{plan_id}/approve")
def approve(plan_id: int, request: Request, store: StoreDep, p: AdminAuth) -> dict[str, Any]:
    """Approve a pending plan; the loop applies it at its next tick (409 if not pending)."""
    out = store.plans.approve(plan_id, who(p)).to_dict()
    _wake(request)
    return out


@router.get("/endpoints/{name}/events")
def endpoint_events(name: str, store: StoreDep, settings: SettingsDep, p: UserAuth,
                    limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
    """What happened to the endpoint, newest first: driver failures with their message,
    recoveries, down and up."""
    return store.plans.endpoint_events(_endpoint(settings, name), limit)


@router.post("/endpoints/{name}/up")
def up(name: str, request: Request, store: StoreDep, settings: SettingsDep,
       p: AdminAuth) -> dict[str, Any]:
    """Apply the endpoint's wanted state now: end a `down`, drop any back-off, and approve
    its pending plan (or the next one the loop makes)."""
    _endpoint(settings, name)
    store.plans.set_down(name, None)
    store.plans.set_backoff(name, Backoff())
    store.plans.endpoint_event(name, "up", f"{who(p)} asked to apply its wanted state now")
    pending = store.plans.open(name, PlanState.PENDING)
    if pending is not None:
        store.plans.ask_up(name, None)
        approved = store.plans.approve(pending.id, f"{who(p)} (cloudpilot up)")
        message = f"plan {approved.id} approved; the loop applies it now"
        out: dict[str, Any] = {"endpoint": name, "plan": approved.to_dict(),
                               "message": message}
    else:
        store.plans.ask_up(name, who(p))
        out = {"endpoint": name, "plan": None,
               "message": "no pending plan: the next plan for this endpoint is applied at once"}
    _wake(request)
    return out


@router.post("/endpoints/{name}/down")
def down(name: str, request: Request, store: StoreDep, settings: SettingsDep,
         p: AdminAuth) -> dict[str, Any]:
    """Take the endpoint down: every machine it manages is removed and none is started until
    `up`. Its open plans are superseded; the loop makes and applies the plan that removes
    the machines (the operator's `down` is its approval)."""
    _endpoint(settings, name)
    by = who(p)
    store.plans.set_down(name, by)
    store.plans.endpoint_event(name, "down", f"taken down by {by}")
    store.plans.ask_up(name, None)
    store.plans.set_backoff(name, Backoff())
    dropped = store.plans.withdraw(name, f"the endpoint was taken down by {by}",
                                   states=(PlanState.PENDING, PlanState.APPROVED))
    _wake(request)
    return {"endpoint": name, "down_by": by, "superseded": dropped,
            "message": "the loop removes the endpoint's machines now"}
