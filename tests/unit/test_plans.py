"""Plans: the state table, the approval policy, back-off and the store (the loop's plan/apply
step is in test_reconcile.py; the local driver's end-to-end tests are in
tests/integration/test_plans.py)."""

import pytest

from controller.config.settings import endpoint_config
from controller.domain.endpoints import Backoff
from controller.domain.machines import MachineState, MachineView
from controller.domain.plans import (
    TRANSITIONS,
    ApprovalPolicy,
    PlanDiff,
    PlanState,
    auto_approval,
    check_transition,
    down_decision,
    plan_cost,
)
from controller.domain.scheduling import Decision
from controller.domain.transitions import IllegalTransition
from controller.errors import Conflict, NotFound
from controller.store import Store

P = PlanState


# the state table ------------------------------------------------------------------------------
def test_plan_edges():
    assert check_transition(P.PENDING, P.APPROVED)
    assert check_transition(P.APPROVED, P.APPLYING)
    assert check_transition(P.APPLYING, P.APPLIED)
    assert check_transition(P.APPLYING, P.APPROVED)  # a restart mid-apply: applied again
    for old, new in [(P.APPLIED, P.PENDING), (P.FAILED, P.APPROVED), (P.PENDING, P.APPLIED),
                     (P.SUPERSEDED, P.APPROVED), (P.APPROVED, P.APPLIED)]:
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
    assert endpoint_config(name="l").auto_apply is True
    aws = endpoint_config(name="c", driver="aws", aws={"region": "eu-west-1", "ami": "ami-1"})
    assert aws.auto_apply is False
    spot = endpoint_config(name="s", driver="aws", auto_apply_max_cost_per_hour=1,
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
def store(database):
    s = Store(database)
    s.endpoints.sync([{"name": "ep", "driver": "aws"}])
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
    store.plans.start_applying(p2.id, now=5)
    assert store.plans.resume_interrupted("ep", now=6) == [p2.id]  # a restart mid-apply
    store.plans.start_applying(p2.id, now=7)
    store.plans.finish(p2.id, P.APPLIED, "created ep-0001, ep-0002", now=8)
    assert [e["to_state"] for e in store.plans.events(p2.id)] == [
        "pending", "approved", "applying", "approved", "applying", "applied"]
    with pytest.raises(NotFound):
        store.plans.get(99)


def test_endpoint_marks(store):
    m = store.endpoints.get("ep")
    assert (m.down_by, m.up_by, m.backoff.failures) == (None, None, 0)
    store.endpoints.set_down("ep", "bob")
    store.endpoints.set_backoff("ep", Backoff().failed(10))
    m = store.endpoints.get("ep")
    assert m.down_by == "bob" and m.backoff.failures == 1 and m.backoff.not_before == 15
    with pytest.raises(NotFound):
        store.endpoints.set_down("nope", "bob")
