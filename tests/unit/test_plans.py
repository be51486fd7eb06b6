"""Plans: the state table, the approval policy, back-off, the store, and the loop's plan/apply
step with an in-memory fake cloud driver (a real cloud cannot run here; the local driver's
end-to-end tests are in tests/integration/test_plans.py)."""

import pytest

from controller.config.settings import EndpointConfig, Settings
from controller.domain.jobs import NewJob, Requirements
from controller.domain.machines import MachineState, MachineView
from controller.domain.plans import (
    TRANSITIONS,
    ApprovalPolicy,
    Backoff,
    PlanDiff,
    PlanState,
    auto_approval,
    check_transition,
    down_decision,
    plan_cost,
)
from controller.domain.scheduling import Decision
from controller.domain.transitions import IllegalTransition
from controller.drivers.base import ApplyResult, ObservedMachine
from controller.errors import Conflict, DriverError, NotFound
from controller.reconcile.loop import Reconciler
from controller.store import Store

P = PlanState


# the state table ------------------------------------------------------------------------------
def test_plan_edges():
    assert check_transition(P.PENDING, P.APPROVED)
    assert check_transition(P.APPROVED, P.APPLIED)
    for old, new in [(P.APPLIED, P.PENDING), (P.FAILED, P.APPROVED), (P.PENDING, P.APPLIED),
                     (P.SUPERSEDED, P.APPROVED)]:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)
    reachable = {P.PENDING} | {new for _, new in TRANSITIONS}
    assert reachable == set(P)


# the approval policy --------------------------------------------------------------------------
def diff(create=(), delete=()):
    return PlanDiff("ep", tuple(create), tuple(delete))


def test_auto_apply_and_manual():
    assert auto_approval(ApprovalPolicy(True), diff(["a", "b"])) == (True, "auto_apply")
    ok, why = auto_approval(ApprovalPolicy(False), diff(["a"]))
    assert not ok and "auto_apply is off" in why


def test_threshold_on_new_machines_and_cost():
    pol = ApprovalPolicy(False, max_new=2)
    assert auto_approval(pol, diff(["a", "b"]))[0]
    ok, why = auto_approval(pol, diff(["a", "b", "c"]))
    assert not ok and "3 new machines > auto_apply_max_new 2" in why
    assert auto_approval(ApprovalPolicy(False, max_new=0), diff(delete=["x"]))[0]
    pol = ApprovalPolicy(False, max_cost_per_hour=0.25, machine_cost_per_hour=0.1)
    assert plan_cost(pol, diff(["a", "b"])) == 0.2
    assert auto_approval(pol, diff(["a", "b"]))[0]
    ok, why = auto_approval(pol, diff(["a", "b", "c"]))
    assert not ok and "0.3/h > auto_apply_max_cost_per_hour 0.25" in why
    ok, why = auto_approval(ApprovalPolicy(False, max_cost_per_hour=1.0), diff(["a"]))
    assert not ok and "cost is unknown" in why
    # a priced endpoint: each new machine's price, as the scheduler chose it
    priced = PlanDiff("ep", ("a", "b"), (), specs={"a": {"price": 0.07}, "b": {"price": 0.1}})
    assert plan_cost(ApprovalPolicy(False), priced) == 0.17


def test_endpoint_defaults_auto_apply_by_driver():
    assert EndpointConfig(name="l").auto_apply is True
    aws = EndpointConfig(name="c", driver="aws", aws={"region": "eu-west-1", "ami": "ami-1"})
    assert aws.auto_apply is False
    spot = EndpointConfig(name="s", driver="aws", auto_apply_max_cost_per_hour=1,
                          aws={"region": "r", "ami": "ami-1", "spot": True,
                               "spot_max_price": 0.04})
    assert spot.approval_policy().machine_cost_per_hour == 0.04


def test_backoff_doubles_up_to_a_cap():
    b = Backoff()
    assert b.ready(0)
    waits = []
    for _ in range(8):
        b = b.failed(100.0)
        waits.append(b.wait(100.0))
    assert waits[:4] == [5, 10, 20, 40] and waits[-1] == 300
    assert not b.ready(399) and b.ready(400)


def test_down_decision_stops_every_managed_machine():
    views = [MachineView("ep-0001", "ep", MachineState.RUNNING, 0, 2),
             MachineView("ep-0002", "ep", MachineState.BOOTING, 0, 2),
             MachineView("joined", "ep", MachineState.RUNNING, 0, 2, managed=False)]
    d = Decision("ep", ("ep-0003",), (), ("ep-0001", "ep-0002", "ep-0003"), 3.0)
    down = down_decision(d, views, "admin token 1")
    assert down.wanted == () and down.start == ()
    assert {r.name for r in down.remove} == {"ep-0001", "ep-0002"}
    assert all(r.to == MachineState.STOPPING for r in down.remove)


# the store ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "p.db")
    s.machines.sync_endpoints([{"name": "ep", "driver": "aws"}])
    yield s
    s.close()


def test_propose_keeps_the_same_change_and_supersedes_another(store):
    p1, new = store.plans.propose(PlanDiff.between("ep", [], ["ep-0001"]), ["r"], "scheduler",
                                  None, now=1)
    assert new and p1.state == P.PENDING and p1.create == ("ep-0001",)
    again, new = store.plans.propose(PlanDiff.between("ep", [], ["ep-0001"]), ["r2"],
                                     "scheduler", None, now=2)
    assert not new and again.id == p1.id and again.reasons == ("r2",)
    p2, new = store.plans.propose(PlanDiff.between("ep", [], ["ep-0001", "ep-0002"]), [],
                                  "scheduler", 0.2, now=3)
    assert new and p2.id != p1.id and p2.cost_per_hour == 0.2
    old = store.plans.get(p1.id)
    assert old.state == P.SUPERSEDED and old.message == f"replaced by plan {p2.id}"
    with pytest.raises(Conflict, match="superseded"):
        store.plans.approve(p1.id, "alice")
    approved = store.plans.approve(p2.id, "alice", now=4)
    assert approved.approved_by == "alice"
    assert store.plans.open("ep", P.APPROVED).id == p2.id
    store.plans.finish(p2.id, P.APPLIED, "created ep-0001, ep-0002", now=5)
    assert [e["to_state"] for e in store.plans.events(p2.id)] == ["pending", "approved",
                                                                  "applied"]
    with pytest.raises(NotFound):
        store.plans.get(99)


def test_marks(store):
    m = store.plans.marks("ep")
    assert (m.down_by, m.up_by, m.backoff.failures) == (None, None, 0)
    store.plans.set_down("ep", "bob")
    store.plans.set_backoff("ep", Backoff().failed(10))
    m = store.plans.marks("ep")
    assert m.down_by == "bob" and m.backoff.failures == 1 and m.backoff.not_before == 15
    with pytest.raises(NotFound):
        store.plans.set_down("nope", "bob")


# the loop's plan/apply step, with a fake cloud ---------------------------------------------------
class FakeCloudDriver:
    """An in-memory stand-in for a cloud driver (no cloud runs here): machines are names in a
    set; `fail` makes the next apply create only some machines, or raise."""

    def __init__(self, name):
        self.name = name
        self.machines: set[str] = set()
        self.fail: str | None = None  # None, "partial" or "raise"
        self.applied: list[PlanDiff] = []

    def observe(self):
        return [ObservedMachine(n, True, f"10.0.0.{n[-1]}", f"id i-{n}")
                for n in sorted(self.machines)]

    def plan(self, current, wanted):
        return PlanDiff.between(self.name, current, wanted)

    def apply(self, diff):
        self.applied.append(diff)
        if self.fail == "raise":
            raise DriverError("credentials rejected: AuthFailure")
        created = list(diff.create)
        errors = {}
        if self.fail == "partial":
            errors = {n: "InsufficientInstanceCapacity" for n in created[1:]}
            created = created[:1]
        self.machines |= set(created)
        self.machines -= set(diff.delete)
        return ApplyResult(tuple(created), tuple(diff.delete), errors)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def world(tmp_path):
    ep = EndpointConfig(name="ep", slots=1, max_machines=5, max_starts_per_cycle=5,
                        auto_apply=False, auto_apply_max_new=1)
    settings = Settings(database=tmp_path / "l.db", endpoints=[ep])
    store = Store(settings.database)
    store.machines.sync_endpoints([e.model_dump() for e in settings.endpoints])
    store.tokens.create_user("alice", "g")
    driver = FakeCloudDriver("ep")
    clock = Clock()
    loop = Reconciler(settings, store, {"ep": driver}, clock=clock)
    yield store, driver, loop, clock
    store.close()


def submit(store, n):
    store.jobs.submit([NewJob("/bin/true", requirements=Requirements(cores=1))] * n, "alice",
                      "g", 3)


def test_over_the_threshold_waits_for_approval_then_applies(world):
    store, driver, loop, _clock = world
    submit(store, 3)
    loop.tick()
    (plan,) = store.plans.find("ep")
    assert plan.state == P.PENDING and plan.create == ("ep-0001", "ep-0002", "ep-0003")
    assert "3 new machines > auto_apply_max_new 1" in plan.message
    assert driver.applied == [] and store.machines.find("ep") == []  # nothing pretended
    ep = store.machines.endpoints()[0]
    assert f"cloudpilot plan approve {plan.id}" in ep["message"]
    loop.tick()  # the same change: the same plan
    assert [p.id for p in store.plans.find("ep")] == [plan.id]
    store.plans.approve(plan.id, "admin")
    loop.tick()
    assert store.plans.get(plan.id).state == P.APPLIED
    assert driver.machines == {"ep-0001", "ep-0002", "ep-0003"}
    assert {m["state"] for m in store.machines.find("ep")} == {"booting"}
    loop.tick()  # the controller records what the cloud reports of each machine
    m = store.machines.get("ep-0002")
    assert (m["address"], m["observed"]) == ("10.0.0.2", "id i-ep-0002")


def test_under_the_threshold_applies_at_once(world):
    store, driver, loop, _ = world
    submit(store, 1)
    loop.tick()
    (plan,) = store.plans.find("ep")
    assert plan.state == P.APPLIED and plan.approved_by.startswith("within the auto-apply")
    assert driver.machines == {"ep-0001"}


def test_a_failed_apply_is_recorded_and_backed_off(world):
    store, driver, loop, clock = world
    submit(store, 1)
    driver.fail = "raise"
    loop.tick()
    (plan,) = store.plans.find("ep")
    assert plan.state == P.FAILED and "AuthFailure" in plan.message
    ep = store.machines.endpoints()[0]
    assert ep["state"] == "error" and "AuthFailure" in ep["message"]
    assert "retry in 5s" in ep["message"]
    (m,) = store.machines.find("ep")  # the driver raised: the machine was not created
    assert m["state"] == "failed" and "AuthFailure" in m["reason"]
    clock.t += 2
    loop.tick()  # backing off: the driver is left alone
    assert len(driver.applied) == 1 and len(store.plans.find("ep")) == 1
    driver.fail = None
    clock.t += 4
    loop.tick()
    latest = store.plans.find("ep")[0]
    assert latest.state == P.APPLIED and latest.create == ("ep-0002",)
    assert store.machines.endpoints()[0]["state"] == "ok"
    assert store.plans.marks("ep").backoff.failures == 0
    events = store.plans.endpoint_events("ep")
    assert [e["state"] for e in events] == ["ok", "error"]  # newest first: failed, recovered
    assert "AuthFailure" in events[1]["message"]


def test_a_partial_failure_keeps_the_view_of_what_exists(world):
    store, driver, loop, _clock = world
    submit(store, 2)
    plan, _ = store.plans.propose(PlanDiff.between("ep", [], ["ep-0001", "ep-0002"]), [],
                                  "scheduler", None)
    store.plans.approve(plan.id, "admin")
    driver.fail = "partial"
    loop.tick()
    assert store.plans.get(plan.id).state == P.FAILED
    states = {m["name"]: m["state"] for m in store.machines.find("ep")}
    assert states == {"ep-0001": "booting", "ep-0002": "failed"}
    assert "InsufficientInstanceCapacity" in store.machines.get("ep-0002")["reason"]


def test_down_removes_every_machine_without_approval(world):
    store, driver, loop, _clock = world
    submit(store, 1)
    loop.tick()
    assert driver.machines == {"ep-0001"}
    store.plans.set_down("ep", "admin token 1")
    loop.tick()
    plan = store.plans.find("ep")[0]
    assert plan.delete == ("ep-0001",) and plan.asked_by == "admin token 1"
    assert plan.state == P.APPLIED and driver.machines == set()
    assert store.machines.get("ep-0001")["state"] == "stopped"
    loop.tick()  # still down: waiting work starts nothing
    assert driver.machines == set()
    assert store.machines.endpoints()[0]["state"] == "down"
