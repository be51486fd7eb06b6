"""Response bodies of the operator routes (endpoints, machines, plans, hosts, ticks, users and
tokens), so that GET /openapi.json types every answer. Each model is built from the store's
typed records; routes only translate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from controller.domain.hostpool import Host
from controller.domain.machines import Machine
from controller.domain.plans import Plan
from controller.domain.scheduling import Decision


class Health(BaseModel):
    status: str


class EndpointEventOut(BaseModel):
    at: float
    state: str = Field(description="ok, error, down or up")
    message: str


class RefusalOut(BaseModel):
    """An offer the cloud refused lately (issue 24): not tried again until `until`."""

    pool: str = Field(description="machine type / zone / market")
    kind: str = Field(description="capacity or quota")
    message: str = Field(description="what the cloud said the last time")
    failures: int = Field(description="refusals in a row (each doubles the block)")
    since: float
    until: float
    blocked: bool = Field(description="whether it blocks the offer now")


class RemovalOut(BaseModel):
    name: str
    to: str
    reason: str


class DecisionOut(BaseModel):
    start: list[str]
    demand: float
    remove: list[RemovalOut]
    reasons: list[str]

    @classmethod
    def of(cls, d: Decision) -> DecisionOut:
        return cls(start=list(d.start), demand=round(d.demand, 2),
                   remove=[RemovalOut(name=r.name, to=r.to.value, reason=r.reason)
                           for r in d.remove],
                   reasons=list(d.reasons))


class WorkOut(BaseModel):
    what: str = Field(description="what the endpoint's worker is doing, e.g. applying plan 4")
    since: float | None


class EndpointOut(BaseModel):
    name: str
    driver: str
    state: str = Field(description="ok, error or down")
    message: str
    config: dict[str, Any]
    machines: dict[str, int] = Field(description="machines by state")
    down_by: str | None
    retry_at: float | None = Field(description="back-off: the loop leaves it until then")
    events: list[EndpointEventOut] = Field(description="the latest, newest first")
    last_decision: DecisionOut | None
    work: WorkOut | None = Field(description="slow work in progress (None: idle)")
    refusals: list[RefusalOut] = Field(default_factory=list, description="offers the cloud "
                                       "refused lately (capacity, quota)")


class MachineOut(BaseModel):
    name: str
    endpoint: str
    state: str
    created_at: float
    updated_at: float
    last_busy_at: float | None
    last_seen: float | None
    address: str | None
    reason: str | None
    managed: bool
    observed: str | None
    info: dict[str, Any]
    jobs: int = Field(description="jobs it holds now")

    @classmethod
    def of(cls, m: Machine, jobs: int) -> MachineOut:
        return cls(**m.to_dict(), jobs=jobs)


class StateEventOut(BaseModel):
    at: float
    from_state: str | None
    to_state: str
    reason: str | None


class TaskQueueOut(BaseModel):
    id: int
    owner: str
    group: str
    priority: int
    waiting: int
    requirements: dict[str, Any]
    unmatchable: str | None = Field(description="why no endpoint can run it, if none can")


class SummaryOut(BaseModel):
    jobs: dict[str, int] = Field(description="jobs by state")
    machines: dict[str, int] = Field(description="live machines by state")


class ShareOut(BaseModel):
    kind: str = Field(description="group or owner")
    name: str
    group: str = Field(description="an owner's group (empty for a group)")
    share: float
    usage_core_hours: float = Field(description="used core-hours, decayed with the half-life")
    held_cores: float = Field(description="cores its jobs hold now")
    load: float = Field(description="(decayed usage / half-life + cores held) / share: "
                                    "the lowest is served first")
    rank: int = Field(description="1: served next (owners ranked within their group)")


class SharesOut(BaseModel):
    by: str = Field(description="fair share by owner or by group")
    half_life: float = Field(description="seconds")
    shares: list[ShareOut]


class PlanOut(BaseModel):
    id: int
    endpoint: str
    state: str = Field(description="pending, approved, applying, applied, failed, superseded")
    create: list[str]
    delete: list[str]
    wanted: list[str]
    reasons: list[str]
    detail: str
    asked_by: str
    approved_by: str | None
    message: str
    cost_per_hour: float | None
    created_at: float
    updated_at: float
    specs: dict[str, dict[str, Any]]
    engine_plan: bool = Field(False, description="the plan holds Pulumi's own update plan "
                              "(preview --save-plan): approving it applies exactly that")

    @classmethod
    def of(cls, p: Plan) -> PlanOut:
        return cls(**p.to_dict())


class PlanDetailOut(PlanOut):
    events: list[StateEventOut]


class UpOut(BaseModel):
    endpoint: str
    plan: PlanOut | None
    message: str


class DownOut(BaseModel):
    endpoint: str
    down_by: str
    superseded: list[int] = Field(description="open plans dropped")
    message: str


class HostOut(BaseModel):
    name: str
    machine: str
    address: str
    port: int
    source: str
    membership: str = Field(description="joining, member or left")
    joined_at: float
    facts: dict[str, Any] | None
    failures: int
    last_error: str | None
    slots: int
    machine_state: str | None
    reason: str | None
    jobs: int


class HostChangeOut(BaseModel):
    name: str
    machine: str
    address: str
    port: int
    membership: str

    @classmethod
    def of(cls, h: Host) -> HostChangeOut:
        return cls(name=h.name, machine=h.machine, address=h.address, port=h.port,
                   membership=h.membership.value)


class HostEventOut(BaseModel):
    host: str
    at: float
    event: str
    detail: str | None


class ExplainOut(BaseModel):
    tick: int
    at: float
    endpoint: str
    config: dict[str, Any] = Field(description="the endpoint's spec as decide() saw it")
    queues: list[dict[str, Any]]
    machines: list[dict[str, Any]] = Field(description="machines (or an SSH pool's hosts)")
    prices: dict[str, float]
    budget: dict[str, Any]
    candidates: list[dict[str, Any]]
    started: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    demand: float
    reasons: list[str]
    refusals: list[dict[str, Any]] = Field(default_factory=list, description="offers the "
                                           "cloud refused lately, as the decision saw them")


class TickSummaryOut(BaseModel):
    id: int
    endpoint: str
    at: float
    starts: int
    removes: int


class TickOut(BaseModel):
    id: int
    endpoint: str
    at: float
    inputs: dict[str, Any]
    decision: dict[str, Any]


class UserOut(BaseModel):
    name: str
    group: str
    share: float


class TokenInfoOut(BaseModel):
    id: int
    role: str
    owner: str | None
    endpoint: str | None
    job_id: int | None
    machine: str | None = Field(None, description="a pilot token bound to one machine")
    pilot_id: str | None = Field(None, description="a registered pilot's own credential; "
                                 "a pilot token without one is a one-time bootstrap token")
    created_at: float
    expires_at: float | None
    note: str | None


class OverviewOut(BaseModel):
    """The dashboard's overview: jobs by state (yours, or everyone's for an admin), machines
    by endpoint and state, and spend per endpoint."""

    jobs: dict[str, int] = Field(description="jobs by state")
    machines: dict[str, dict[str, int]] = Field(description="endpoint -> state -> count")
    spend_rate: dict[str, float] = Field(description="endpoint -> USD per hour now")
    spent_today: dict[str, float] = Field(description="endpoint -> USD since local midnight")
    spent_total: dict[str, float] = Field(description="endpoint -> USD in all")


class AmountOut(BaseModel):
    attempts: int = Field(description="attempts begun (counted on the day each began)")
    core_hours: float
    money: float = Field(description="USD: its share of its machines' cost by core-seconds")


class UsageRowOut(BaseModel):
    day: str = Field(description="YYYY-MM-DD, UTC")
    name: str = Field(description="the owner, group or endpoint")
    total: AmountOut
    by_status: dict[str, AmountOut] = Field(
        description="done, failed, interrupted, killed, running: each apart")


class IdleOut(BaseModel):
    day: str
    endpoint: str
    money: float = Field(description="USD its machines cost while they held no job")


class UsageOut(BaseModel):
    """Accounting: core-hours and money by day per owner, group or endpoint. Money per owner
    plus the idle money is what the endpoints spent in the window."""

    by: str
    since: float
    until: float
    rows: list[UsageRowOut]
    idle: list[IdleOut] = Field(description="admins only (empty for a user)")
    spent: dict[str, float] = Field(description="endpoint -> USD spent in the window (admins "
                                                "only)")
