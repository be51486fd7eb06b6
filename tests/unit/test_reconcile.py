"""The reconcile loop with the in-memory driver (controller/testing.py; no cloud runs here)
and a real SQLite store: plans and applies, back-off, endpoints that hang, fail or break,
controller restarts mid-apply, and SSH endpoints' recorded ticks."""

import logging
import threading

import pytest

from controller.config.settings import Settings, endpoint_config
from controller.domain import ticks as tick_docs
from controller.domain.endpoints import EndpointState
from controller.domain.jobs import JobState, NewJob, Requirements
from controller.domain.machines import MachineState as M
from controller.domain.matching import SlotOffer
from controller.domain.plans import PlanDiff
from controller.domain.plans import PlanState as P
from controller.reconcile.loop import Reconciler
from controller.store import Store
from controller.testing import Clock, InMemoryDriver
from tests.conftest import wait_until


def tick(loop):
    """One tick, then its endpoints' work (applies run in each endpoint's worker)."""
    result = loop.tick()
    assert loop.wait_idle(10)
    return result


# plans and applies -----------------------------------------------------------------------------
@pytest.fixture
def world(database):
    yield from loop_world(database, endpoint_config(
        name="ep", slots=1, max_machines=5, max_starts_per_cycle=5, auto_apply=False,
        auto_apply_max_new=1))


def loop_world(database, ep):
    """A store, the in-memory driver, a loop and its clock for one endpoint `ep`."""
    settings = Settings(database=database, endpoints=[ep])
    store = Store(settings.database)
    store.endpoints.sync([e.model_dump() for e in settings.endpoints])
    store.tokens.create_user("alice", "g")
    driver = InMemoryDriver("ep")
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
    tick(loop)
    (plan,) = store.plans.find("ep")
    assert plan.state == P.PENDING and plan.create == ("ep-0001", "ep-0002", "ep-0003")
    assert "3 new machines > auto_apply_max_new 1" in plan.message
    assert driver.applied == [] and store.machines.find("ep") == []  # nothing pretended
    ep = store.endpoints.get("ep")
    assert f"cloudpilot plan approve {plan.id}" in ep.message
    tick(loop)  # the same change: the same plan
    assert [p.id for p in store.plans.find("ep")] == [plan.id]
    store.plans.approve(plan.id, "admin")
    tick(loop)
    assert store.plans.get(plan.id).state == P.APPLIED
    assert driver.machines == {"ep-0001", "ep-0002", "ep-0003"}
    assert {m.state for m in store.machines.find("ep")} == {M.BOOTING}
    tick(loop)  # the controller records what the cloud reports of each machine
    m = store.machines.get("ep-0002")
    assert (m.address, m.observed) == ("10.0.0.2", "id i-ep-0002")


def test_under_the_threshold_applies_at_once(world):
    store, driver, loop, _ = world
    submit(store, 1)
    tick(loop)
    (plan,) = store.plans.find("ep")
    assert plan.state == P.APPLIED and plan.approved_by.startswith("within the auto-apply")
    assert driver.machines == {"ep-0001"}


def test_a_failed_apply_is_recorded_and_backed_off(world):
    store, driver, loop, clock = world
    submit(store, 1)
    driver.fail = "raise"
    tick(loop)
    (plan,) = store.plans.find("ep")
    assert plan.state == P.FAILED and "AuthFailure" in plan.message
    ep = store.endpoints.get("ep")
    assert ep.state == EndpointState.ERROR and "AuthFailure" in ep.message
    assert "retry in 5s" in ep.message
    (m,) = store.machines.find("ep")  # the driver raised: the machine was not created
    assert m.state == M.FAILED and "AuthFailure" in m.reason
    clock.t += 2
    tick(loop)  # backing off: the driver is left alone
    assert len(driver.applied) == 1 and len(store.plans.find("ep")) == 1
    driver.fail = None
    clock.t += 4
    tick(loop)
    latest = store.plans.find("ep")[0]
    assert latest.state == P.APPLIED and latest.create == ("ep-0002",)
    assert store.endpoints.get("ep").state == EndpointState.OK
    assert store.endpoints.get("ep").backoff.failures == 0
    events = store.endpoints.events("ep")
    assert [e["state"] for e in events] == ["ok", "error"]  # newest first: failed, recovered
    assert "AuthFailure" in events[1]["message"]


def test_a_partial_failure_keeps_the_view_of_what_exists(world):
    store, driver, loop, _clock = world
    submit(store, 2)
    plan, _ = store.plans.propose(PlanDiff.between("ep", [], ["ep-0001", "ep-0002"]), [],
                                  "scheduler", None)
    store.plans.approve(plan.id, "admin")
    driver.fail = "partial"
    tick(loop)
    assert store.plans.get(plan.id).state == P.FAILED
    states = {m.name: m.state for m in store.machines.find("ep")}
    assert states == {"ep-0001": M.BOOTING, "ep-0002": M.FAILED}
    assert "InsufficientInstanceCapacity" in store.machines.get("ep-0002").reason


def test_down_removes_every_machine_without_approval(world):
    store, driver, loop, _clock = world
    submit(store, 1)
    tick(loop)
    assert driver.machines == {"ep-0001"}
    store.endpoints.set_down("ep", "admin token 1")
    tick(loop)
    plan = store.plans.find("ep")[0]
    assert plan.delete == ("ep-0001",) and plan.asked_by == "admin token 1"
    assert plan.state == P.APPLIED and driver.machines == set()
    assert store.machines.get("ep-0001").state == M.STOPPED
    tick(loop)  # still down: waiting work starts nothing
    assert driver.machines == set()
    assert store.endpoints.get("ep").state == EndpointState.DOWN


# endpoints that hang, break or are interrupted -------------------------------------------------
@pytest.fixture
def two(database):
    """Two auto-applied endpoints, `slow` and `fast`, on the in-memory driver; stalled jobs
    after 10 s of silence; applies time out after 60 s."""
    eps = [endpoint_config(name=n, slots=1, max_machines=2, auto_apply=True, apply_timeout=60)
           for n in ("slow", "fast")]
    settings = Settings(database=database, endpoints=eps, lease=10,
                        lease_margin=0)
    store = Store(settings.database, lease=settings.lease)
    store.endpoints.sync([e.model_dump() for e in eps])
    store.tokens.create_user("alice", "g")
    drivers = {"slow": InMemoryDriver("slow"), "fast": InMemoryDriver("fast")}
    clock = Clock()
    loop = Reconciler(settings, store, drivers, clock=clock)
    yield store, drivers, loop, clock
    for d in drivers.values():
        d.close()
    assert loop.wait_idle(10)
    store.close()


def held_job(store, clock, endpoint, machine):
    """A job held by a pilot on `machine` (registered by hand, as a pilot would)."""
    (job_id,) = store.jobs.submit([NewJob("/bin/true", requirements=Requirements(
        cores=1, endpoints=frozenset({endpoint})))], "alice", "g", 3, now=clock())
    store.machines.register_pilot("p1", endpoint, machine, 1, 2048, [], 1, "test",
                                  now=clock())
    got = store.jobs.match("p1", machine, SlotOffer(endpoint, 1, 2048), by="owner",
                           shares={}, now=clock()).jobs
    assert [j.id for j, _ in got] == [job_id]
    return job_id


def test_a_hanging_driver_holds_up_no_other_endpoint(two, caplog):
    store, drivers, loop, clock = two
    drivers["slow"].hold = threading.Event()  # its applies hang until released
    job = held_job(store, clock, "fast", "pilot-by-hand")
    store.jobs.submit([NewJob("/bin/true", requirements=Requirements(
        cores=1, endpoints=frozenset({"slow"})))], "alice", "g", 3, now=clock())
    loop.tick()
    slow, fast = loop.endpoints
    wait_until(lambda: drivers["slow"].applied, 5, 0.01, "the slow apply to start")
    assert slow.worker.busy and loop.work("slow") == ("applying plan 1", 1000.0)
    (plan,) = store.plans.find("slow")
    assert plan.state == P.APPLYING  # visible while the driver works
    assert store.machines.get("slow-0001").state == M.REQUESTED
    # the silent pilot: its job is rescheduled while the slow driver still hangs
    clock.t += 11
    loop.tick()
    assert store.jobs.get(job).state == JobState.WAITING
    # the fast endpoint was decided (its tick recorded): the requeued job fits its pilot
    assert store.ticks.latest("fast")["at"] == clock.t
    assert store.ticks.latest("slow")["at"] == 1000.0  # the slow one's decision stands
    store.jobs.submit([NewJob("/bin/true", requirements=Requirements(
        cores=1, endpoints=frozenset({"fast"})))] * 2, "alice", "g", 3, now=clock())
    loop.tick()
    assert fast.worker.wait(5)
    assert drivers["fast"].machines == {"fast-0001"}  # and applied
    assert slow.worker.busy and len(drivers["slow"].applied) == 1
    # past its timeout, the apply counts as failed (once); the endpoint waits for the driver
    clock.t += 60
    loop.tick()
    loop.tick()
    plan = store.plans.get(plan.id)
    assert plan.state == P.FAILED and "timed out after 60s" in plan.message
    ep = store.endpoints.get("slow")
    assert ep.state == EndpointState.ERROR and "took longer than 60s" in ep.message
    assert [e["state"] for e in store.endpoints.events("slow")] == ["error"]
    assert store.machines.get("slow-0001").state == M.FAILED
    assert len(drivers["slow"].applied) == 1  # never asked twice at once
    with caplog.at_level(logging.WARNING, "cloudpilot.loop"):
        drivers["slow"].close()  # the driver returns at last: logged, not applied
        assert slow.worker.wait(5)
    assert "ended after its timeout" in caplog.text
    assert store.plans.get(plan.id).state == P.FAILED


def test_a_restart_mid_apply_applies_the_plan_again(database):
    ep = endpoint_config(name="ep", slots=1, max_machines=2, auto_apply=True)
    settings = Settings(database=database, endpoints=[ep])
    store = Store(settings.database)
    store.endpoints.sync([ep.model_dump()])
    store.tokens.create_user("alice", "g")
    store.jobs.submit([NewJob("/bin/true")], "alice", "g", 3)
    # what a controller stopped in the middle of an apply leaves behind
    plan, _ = store.plans.propose(PlanDiff.between("ep", [], ["ep-0001"]), [], "scheduler",
                                  None, now=990)
    store.plans.approve(plan.id, "auto_apply", now=990)
    store.plans.start_applying(plan.id, now=991)
    store.machines.create("ep-0001", "ep", 1, "wanted", now=991)
    driver = InMemoryDriver("ep")
    driver.machines = {"ep-0001"}  # the cloud made it before the controller stopped
    loop = Reconciler(settings, store, {"ep": driver}, clock=Clock())
    assert store.plans.get(plan.id).state == P.APPLYING  # another process may be applying it
    loop.lead()  # this process runs the loop now (at start, or taking over)
    assert store.plans.get(plan.id).state == P.APPROVED
    tick(loop)
    assert store.plans.get(plan.id).state == P.APPLIED
    assert driver.applied[0].create == ("ep-0001",)  # applied again: idempotent per name
    assert store.machines.get("ep-0001").state == M.BOOTING
    assert len(store.machines.find("ep")) == 1
    store.close()


class CountingDriver(InMemoryDriver):
    refreshed = 0

    def refresh(self):
        self.refreshed += 1


def test_a_process_that_leads_again_reads_the_drivers_truth_before_acting(world):
    """Issue 26: a process that led, lost the lead and takes it again has its driver read
    the machines again (refresh) before it decides anything: other leaders changed them."""
    store, _driver, loop, _clock = world
    driver = CountingDriver("ep")
    loop.endpoints[0].driver = driver
    tick(loop)  # it leads and observes
    assert driver.refreshed == 0
    driver.machines = {"ep-0007"}  # what another leader made meanwhile
    loop.lead(3)
    submit(store, 1)
    tick(loop)
    assert driver.refreshed == 1 and store.plans.find("ep") == []  # read, nothing decided
    tick(loop)
    assert driver.refreshed == 1 and store.plans.find("ep") != []


class BrokenDriver(InMemoryDriver):
    def observe(self):
        raise KeyError("a bug in cloudpilot, not a cloud outage")


def test_a_bug_is_logged_with_its_traceback_and_not_backed_off(two, caplog):
    store, drivers, loop, clock = two
    loop.endpoints[0].driver = BrokenDriver("slow")
    store.jobs.submit([NewJob("/bin/true")], "alice", "g", 3, now=clock())
    with caplog.at_level(logging.ERROR, "cloudpilot.loop"):
        tick(loop)
    (record,) = [r for r in caplog.records if "slow" in r.getMessage()]
    assert record.exc_info is not None and "a bug in cloudpilot" in caplog.text
    assert "Traceback" in caplog.text
    slow = store.endpoints.get("slow")
    assert slow.backoff.failures == 0 and slow.state == EndpointState.OK
    assert drivers["fast"].machines == {"fast-0001"}  # the other endpoint went on


def test_a_refused_machine_move_is_an_error_and_down_stops_a_requested_machine(world):
    from controller.domain.transitions import IllegalTransition

    store, _driver, _loop, _clock = world
    store.machines.create("ep-0009", "ep", 9, "wanted")
    with pytest.raises(IllegalTransition, match="requested to running"):
        store.machines.move("ep-0009", M.RUNNING)
    assert not store.machines.move("ep-0009", M.BOOTING, if_in={M.BOOTING})  # a skip
    assert store.machines.move("ep-0009", M.STOPPING, "the endpoint is down")
    assert store.machines.get("ep-0009").state == M.STOPPING


# host-pool (SSH) endpoints' ticks ----------------------------------------------------------------
def test_a_host_pool_tick_is_recorded_and_replays():
    import json

    from controller.domain.hostpool import Backoff, HostView, Membership
    from controller.domain.scheduling import EndpointSpec
    from controller.domain.taskqueues import TaskQueue

    shape = SlotOffer("lab", 4, 8192, frozenset({"linux", "gpu"}),
                      required_tags=frozenset({"gpu"}))
    spec = EndpointSpec("lab", shape, slots=2, idle_timeout=30)
    hosts = (HostView("lab-h1", Membership.MEMBER, M.STOPPED, 0.0, 2, shape),
             HostView("lab-h2", Membership.JOINING, None, 0.0, 2))
    queues = (TaskQueue(1, Requirements(cores=1, tags=frozenset({"gpu"})), "alice", "g", 0, 3),)
    inputs = tick_docs.HostTickInputs(spec, queues, hosts, 100.0, Backoff())
    doc = json.loads(json.dumps(tick_docs.encode_hosts(inputs)))  # as the store keeps it
    assert doc["kind"] == "hosts" and doc["machines"][1]["state"] is None
    again = tick_docs.decode(doc)
    assert again == inputs
    assert again.decide().start == ("lab-h1",)


# drift (issue 20) -----------------------------------------------------------------------------
class DriftingDriver(InMemoryDriver):
    """A stack driver whose drift check reports `found` (the Pulumi driver's drift())."""

    found: str | None = None
    checks = 0

    def drift(self):
        self.checks += 1
        return self.found


def test_drift_is_checked_when_due_and_kept_on_the_endpoint(database):
    ep = endpoint_config(name="ep", max_machines=2)
    settings = Settings(database=database, endpoints=[ep], drift_check_every=60)
    store = Store(settings.database)
    store.endpoints.sync([e.model_dump() for e in settings.endpoints])
    driver, clock = DriftingDriver("ep"), Clock()
    loop = Reconciler(settings, store, {"ep": driver}, clock=clock)
    try:
        tick(loop)
        tick(loop)  # nothing to change: the first check is drift_check_every after the start
        assert driver.checks == 0
        driver.found = "delete ep-0001"
        clock.t += 61
        tick(loop)
        assert driver.checks == 1 and store.endpoints.get("ep").drift == "delete ep-0001"
        assert store.endpoints.events("ep")[0]["state"] == "drift"
        tick(loop)  # not due again yet
        assert driver.checks == 1
        driver.found = None
        clock.t += 61
        tick(loop)
        assert driver.checks == 2 and store.endpoints.get("ep").drift is None
        assert [e["state"] for e in store.endpoints.events("ep")][:2] == ["ok", "drift"]
    finally:
        store.close()


class CancellableDriver(InMemoryDriver):
    """A driver whose update can be interrupted (the Pulumi driver: SIGINT to the engine)."""

    def cancel(self):
        assert self.hold is not None
        self.hold.set()  # the interrupted update returns
        return True


def test_an_apply_past_its_timeout_is_cancelled_through_the_driver(database):
    ep = endpoint_config(name="ep", slots=1, max_machines=1, auto_apply=True, apply_timeout=60)
    settings = Settings(database=database, endpoints=[ep])
    store = Store(settings.database)
    store.endpoints.sync([e.model_dump() for e in settings.endpoints])
    store.tokens.create_user("alice", "g")
    driver, clock = CancellableDriver("ep"), Clock()
    driver.hold = threading.Event()
    loop = Reconciler(settings, store, {"ep": driver}, clock=clock)
    try:
        submit(store, 1)
        loop.tick()
        wait_until(lambda: driver.applied, 5, 0.01, "the apply to start")
        clock.t += 61
        loop.tick()
        assert driver.hold.is_set()  # cancelled, not left running
        ep_now = store.endpoints.get("ep")
        assert "took longer than 60s; the update was cancelled through the engine" \
            in ep_now.message
        assert store.plans.find("ep")[0].state == P.FAILED
        assert loop.wait_idle(10)
    finally:
        driver.close()
        store.close()


def test_each_tick_hands_the_matcher_the_predicted_run_times(world):
    """The matcher reads no run-time history: the loop's tick gives it each task queue's
    prediction (issue 23), as decide() is given it."""
    from controller.store.runtimes import RunTimeStore

    store, _driver, loop, clock = world
    submit(store, 2)
    with store.read() as c:
        (tq,) = {int(r[0]) for r in c.execute("SELECT tq_id FROM jobs")}
    with store.tx() as c:
        RunTimeStore.record(c, tq, "alice", 40.0, clock())
    assert store.jobs.predicted.runtimes == {}  # before any tick: each job's max_runtime
    tick(loop)
    assert store.jobs.predicted.runtimes == {tq: 40.0}
