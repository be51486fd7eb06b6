"""The change a driver makes to an endpoint: from the current set of named machines to the
wanted one. Scale-down names the exact machines to remove; it never just lowers a count.

A Plan is that change kept as a record: who asked for it, its state (a transition table), and
whether the endpoint's policy lets it apply without an operator. Pure: no I/O, time injected."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from controller.domain.machines import WANTED_STATES, MachineState, MachineView
from controller.domain.scheduling import Decision, Removal
from controller.domain.transitions import check


@dataclass(frozen=True)
class PlanDiff:
    endpoint: str
    create: tuple[str, ...]
    delete: tuple[str, ...]
    # the full set of named machines after the change (drivers that declare state, such as
    # Pulumi stacks, apply this set; others apply create/delete)
    wanted: tuple[str, ...] = ()
    detail: str = ""  # the driver's own account of the change (e.g. a stack preview summary)
    # priced endpoints: what each machine to create is (type, zone, market, cores, memory)
    specs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)
    # Pulumi's own update plan (`preview --save-plan`, JSON; its secrets encrypted): applied
    # with `up --plan`, so exactly what was reviewed happens
    engine_plan: str = field(default="", compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return not (self.create or self.delete)

    @classmethod
    def between(cls, endpoint: str, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        cur, want = set(current), set(wanted)
        return cls(endpoint, tuple(sorted(want - cur)), tuple(sorted(cur - want)),
                   tuple(sorted(want)))

    def same_change(self, other: PlanDiff) -> bool:
        return (self.endpoint, set(self.create), set(self.delete)) == (
            other.endpoint, set(other.create), set(other.delete))

    def describe(self) -> str:
        parts = [f"+ {n}" for n in self.create] + [f"- {n}" for n in self.delete]
        return "\n".join(parts) if parts else "(no change)"


class PlanState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    APPLYING = "applying"  # the endpoint's worker is making the change
    APPLIED = "applied"
    FAILED = "failed"
    SUPERSEDED = "superseded"


P = PlanState
TRANSITIONS: dict[tuple[PlanState, PlanState], str] = {
    (P.PENDING, P.APPROVED): "approved by an operator, or by the endpoint's auto-apply policy",
    (P.PENDING, P.SUPERSEDED): "a newer plan for the endpoint replaced it, or nothing is left "
                               "to change",
    (P.APPROVED, P.SUPERSEDED): "the endpoint was taken down before it was applied",
    (P.APPROVED, P.APPLYING): "the endpoint's worker started applying it",
    (P.APPLYING, P.APPLIED): "the driver made the change",
    (P.APPLYING, P.FAILED): "the driver could not make (all of) the change, or timed out",
    (P.APPLYING, P.APPROVED): "the controller restarted while applying it: it is applied "
                              "again (drivers are idempotent per machine name)",
}
OPEN_STATES = frozenset({P.PENDING, P.APPROVED, P.APPLYING})
FINAL_STATES = frozenset({P.APPLIED, P.FAILED, P.SUPERSEDED})


def check_transition(old: PlanState, new: PlanState) -> str:
    return check(TRANSITIONS, "plan", old, new)


@dataclass(frozen=True)
class Plan:
    id: int
    endpoint: str
    state: PlanState
    create: tuple[str, ...]
    delete: tuple[str, ...]
    wanted: tuple[str, ...]
    reasons: tuple[str, ...]  # why the change is wanted (the scheduler's reasons)
    detail: str  # the driver's account of the change
    asked_by: str  # "scheduler", or the operator (token) behind `cloudpilot down`
    approved_by: str | None
    message: str  # the outcome: why it waits, the apply error, what superseded it
    cost_per_hour: float | None  # of the machines it creates, when known
    created_at: float
    updated_at: float
    specs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # priced endpoints
    engine_plan: str = field(default="", repr=False)  # Pulumi's update plan (PlanDiff's)

    @property
    def diff(self) -> PlanDiff:
        return PlanDiff(self.endpoint, self.create, self.delete, self.wanted, self.detail,
                        self.specs, self.engine_plan)

    def reason_for(self, machine: str) -> str:
        """Why the plan changes this machine (reasons name machines as "NAME: why")."""
        for r in self.reasons:
            if r.startswith(f"{machine}: "):
                return r[len(machine) + 2:]
        return "; ".join(r for r in self.reasons[:3] if ": " not in r[:60]) or "wanted"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Plan:
        return cls(
            id=row["id"], endpoint=row["endpoint"], state=PlanState(row["state"]),
            create=tuple(json.loads(row["creates"])), delete=tuple(json.loads(row["deletes"])),
            wanted=tuple(json.loads(row["wanted"])), reasons=tuple(json.loads(row["reasons"])),
            detail=row["detail"] or "", asked_by=row["asked_by"],
            approved_by=row["approved_by"], message=row["message"] or "",
            cost_per_hour=row["cost_per_hour"], created_at=row["created_at"],
            updated_at=row["updated_at"], specs=json.loads(row["specs"] or "{}"),
            engine_plan=row["engine_plan"] or "",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "endpoint": self.endpoint, "state": self.state.value,
            "create": list(self.create), "delete": list(self.delete),
            "wanted": list(self.wanted), "reasons": list(self.reasons), "detail": self.detail,
            "asked_by": self.asked_by, "approved_by": self.approved_by,
            "message": self.message, "cost_per_hour": self.cost_per_hour,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "specs": {k: dict(v) for k, v in self.specs.items()},
            "engine_plan": bool(self.engine_plan),
        }


def down_decision(decision: Decision, machines: Sequence[MachineView], by: str) -> Decision:
    """An endpoint an operator took down: no machine is wanted; every live one it manages goes
    (machines already found lost or failed keep that verdict)."""
    gone = {r.name for r in decision.remove}
    stop = tuple(Removal(m.name, MachineState.STOPPING, f"the endpoint is down ({by})")
                 for m in machines if m.managed and m.state in WANTED_STATES
                 and m.name not in gone)
    return replace(decision, start=(), launches=(), remove=decision.remove + stop, wanted=(),
                   reasons=(f"the endpoint is down: taken down by {by}",))


# approval -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApprovalPolicy:
    """When an endpoint's plans apply without an operator."""

    auto_apply: bool
    max_new: int | None = None  # apply automatically up to this many new machines per plan
    max_cost_per_hour: float | None = None  # ... and up to this added cost per hour
    machine_cost_per_hour: float | None = None  # what one machine costs, when known


def plan_cost(policy: ApprovalPolicy, diff: PlanDiff) -> float | None:
    """The hourly cost a plan adds (its new machines: each one's price on a priced endpoint,
    else the endpoint's cost per machine), or None when a machine's cost is unknown."""
    total = 0.0
    for name in diff.create:
        price = (diff.specs.get(name) or {}).get("price", policy.machine_cost_per_hour)
        if price is None:
            return None
        total += float(price)
    return round(total, 6)


def auto_approval(policy: ApprovalPolicy, diff: PlanDiff) -> tuple[bool, str]:
    """(True, why it may apply now) or (False, why it waits for an operator)."""
    if policy.auto_apply:
        return True, "auto_apply"
    if policy.max_new is None and policy.max_cost_per_hour is None:
        return False, "waits for approval (auto_apply is off)"
    n = len(diff.create)
    within = []
    if policy.max_new is not None:
        if n > policy.max_new:
            return False, (f"waits for approval: {n} new machines > auto_apply_max_new "
                           f"{policy.max_new}")
        within.append(f"{n} new <= {policy.max_new}")
    if policy.max_cost_per_hour is not None:
        cost = plan_cost(policy, diff)
        if cost is None:
            return False, ("waits for approval: a machine's cost is unknown (set cost_per_hour "
                           "for auto_apply_max_cost_per_hour)")
        if cost > policy.max_cost_per_hour:
            return False, (f"waits for approval: {cost:g}/h > auto_apply_max_cost_per_hour "
                           f"{policy.max_cost_per_hour:g}")
        within.append(f"{cost:g}/h <= {policy.max_cost_per_hour:g}/h")
    return True, "within the auto-apply threshold (" + ", ".join(within) + ")"
