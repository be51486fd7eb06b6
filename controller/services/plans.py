"""Operators' decisions about an endpoint's plans: approve one, bring the endpoint up (apply
its wanted state now) or take it down. Each is one transaction (all of its writes or none,
never half of them beside the running loop), called by the API (controller/api/plans.py) and
so by `cloudpilot plan approve`, `cloudpilot up` and `cloudpilot down`. They record a wish;
the loop does the work and the caller wakes it."""

from __future__ import annotations

from dataclasses import dataclass

from controller.config.settings import Settings
from controller.domain.endpoints import Backoff, EndpointState
from controller.domain.plans import Plan, PlanState
from controller.errors import NotFound
from controller.store import Store


@dataclass(frozen=True)
class UpResult:
    endpoint: str
    plan: Plan | None  # the pending plan approved at once, if there was one
    message: str


@dataclass(frozen=True)
class DownResult:
    endpoint: str
    down_by: str
    superseded: list[int]  # the open plans dropped
    message: str


def configured(settings: Settings, name: str) -> str:
    """The name of a configured endpoint; NotFound otherwise."""
    if settings.endpoint(name) is None:
        raise NotFound(f"no endpoint {name}")
    return name


def approve(store: Store, plan_id: int, by: str, now: float | None = None) -> Plan:
    """Approve a pending plan (Conflict if it is not pending); the loop applies it."""
    return store.plans.approve(plan_id, by, now)


def up(store: Store, settings: Settings, name: str, by: str) -> UpResult:
    """Apply the endpoint's wanted state now: end a `down`, drop any back-off, and approve
    its pending plan (or the next one the loop makes)."""
    configured(settings, name)
    with store.tx():
        store.endpoints.set_down(name, None)
        store.endpoints.set_backoff(name, Backoff())
        store.endpoints.event(name, "up", f"{by} asked to apply its wanted state now")
        pending = store.plans.open(name, PlanState.PENDING)
        if pending is None:
            store.endpoints.ask_up(name, by)
            return UpResult(name, None, "no pending plan: the next plan for this endpoint is "
                                        "applied at once")
        store.endpoints.ask_up(name, None)
        plan = store.plans.approve(pending.id, f"{by} (cloudpilot up)")
        return UpResult(name, plan, f"plan {plan.id} approved; the loop applies it now")


def down(store: Store, settings: Settings, name: str, by: str) -> DownResult:
    """Take the endpoint down: every machine it manages is removed and none is started until
    `up`. Its open plans are superseded; the loop makes and applies the plan that removes
    the machines (the operator's `down` is its approval)."""
    configured(settings, name)
    with store.tx():
        store.endpoints.set_down(name, by)
        store.endpoints.event(name, EndpointState.DOWN.value, f"taken down by {by}")
        store.endpoints.ask_up(name, None)
        store.endpoints.set_backoff(name, Backoff())
        dropped = store.plans.withdraw(name, f"the endpoint was taken down by {by}",
                                       states=(PlanState.PENDING, PlanState.APPROVED))
    return DownResult(name, by, dropped, "the loop removes the endpoint's machines now")
