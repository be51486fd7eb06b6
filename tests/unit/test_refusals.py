"""When the cloud says no (issue 24): drivers' errors classified, the per-offer block with its
doubling TTL, and the decision that skips a blocked offer for the next cheapest in the same
tick, recorded so that a replay decides the same."""

import pytest

from controller.config.settings import MachineTypeConfig, endpoint_config
from controller.domain import ticks
from controller.domain.endpoints import EndpointState
from controller.domain.machines import MachineState as M
from controller.domain.refusals import Refusal, blocking, classify, refused
from controller.drivers.base import unfenced
from tests.unit.test_packing import NOW, SPEC, pools, run, tq
from tests.unit.test_reconcile import loop_world, submit, tick


@pytest.mark.parametrize("message,kind", [
    # EC2 (the API's error codes, as boto3 and Pulumi's AWS provider print them)
    ("An error occurred (InsufficientInstanceCapacity) when calling the RunInstances "
     "operation: We currently do not have sufficient c5.large capacity in the Availability "
     "Zone you requested (eu-west-1a).", "capacity"),
    ("creating EC2 Instance: SpotMaxPriceTooLow: Your Spot request price of 0.01 is lower "
     "than the minimum required Spot request fulfillment price of 0.0334.", "capacity"),
    ("api error MaxSpotInstanceCountExceeded: Max spot instance count exceeded", "quota"),
    ("InstanceLimitExceeded: You have requested more instances (21) than your current "
     "instance limit of 20 allows", "quota"),
    ("VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit "
     "of 32 allows", "quota"),
    ("Unsupported: Your requested instance type (m7g.large) is not supported in your "
     "requested Availability Zone (us-east-1e).", "capacity"),
    # OpenStack Nova
    ("Server abc is in ERROR state: No valid host was found. There are not enough hosts "
     "available.", "capacity"),
    ("Quota exceeded for cores: Requested 8, but already used 60 of 64 cores (HTTP 403)",
     "quota"),
    ("Quota exceeded for instances: Requested 1, but already used 10 of 10 instances",
     "quota"),
    ("Forbidden: Quota exceeded for ram: Requested 16384, but already used 500000 of 512000 "
     "ram", "quota"),
    # not about capacity: the endpoint backs off as before
    ("AuthFailure: AWS was not able to validate the provided access credentials", "other"),
    ("InvalidAMIID.NotFound: The image id '[ami-123]' does not exist", "other"),
    ("could not start a pilot process: [Errno 2] No such file or directory", "other"),
    ("", "other"),
])
def test_driver_errors_are_classified(message, kind):
    assert classify(message) == kind


def test_a_refusal_blocks_for_the_ttl_doubling_while_it_keeps_failing():
    r1 = refused(None, "s/a/spot", "capacity", "InsufficientInstanceCapacity", 1000.0)
    assert (r1.failures, r1.since, r1.until) == (1, 1000.0, 1180.0)  # 3 minutes
    assert r1.blocks(1179.9) and not r1.blocks(1180.0)
    r2 = refused(r1, "s/a/spot", "capacity", "again", 1200.0)
    assert (r2.failures, r2.since, r2.until) == (2, 1000.0, 1560.0)  # 6 minutes
    r3 = refused(r2, "s/a/spot", "quota", "InstanceLimitExceeded", 1600.0)
    assert (r3.failures, r3.until, r3.kind) == (3, 1600.0 + 720.0, "quota")
    capped = refused(Refusal("p", "capacity", "", 10, 0.0, 0.0), "p", "capacity", "", 0.0,
                     ttl=60.0, max_ttl=600.0)
    assert capped.until == 600.0
    assert set(blocking([r1, r3], 1500.0)) == {"s/a/spot"}  # r1 ended at 1180
    assert Refusal.from_dict(r3.to_dict()) == r3


def blocked(pool, until=NOW + 100, kind="capacity"):
    return Refusal(pool, kind, "InsufficientInstanceCapacity", 1, NOW - 10, until)


def test_a_blocked_offer_is_skipped_for_the_next_cheapest_in_the_same_tick():
    assert pools(run([tq(3)])) == ["s/a/spot", "s/a/spot"]
    d = run([tq(3)], refusals=[blocked("s/a/spot")])
    assert pools(d) == ["s/b/spot", "s/b/spot"]  # the next cheapest, at once
    status = {c.pool: c.status for c in d.candidates}
    assert status["s/a/spot"].startswith("refused (capacity) once, blocked for 100s more")
    assert any("1 of 8 offers blocked after a refusal: s/a/spot" in r for r in d.reasons)
    # both small spot pools sold out: the big one on spot, not on-demand
    d = run([tq(3)], refusals=[blocked("s/a/spot"), blocked("s/b/spot")])
    assert pools(d) == ["b/a/spot"]
    # a block that has run out is not one
    assert pools(run([tq(3)], refusals=[blocked("s/a/spot", until=NOW)])) == [
        "s/a/spot", "s/a/spot"]


def test_every_spot_pool_refused_falls_to_on_demand_but_never_for_nothing():
    spot = [blocked(o.pool) for o in SPEC.offers if o.spot]
    assert pools(run([tq(2)], refusals=spot)) == ["s/a/on-demand"]
    every = [blocked(o.pool) for o in SPEC.offers]
    d = run([tq(2)], refusals=every)
    assert d.start == ()
    assert any("2 waiting jobs not covered" in r for r in d.reasons)


def test_a_tick_with_refusals_replays_to_the_same_decision():
    inputs = ticks.snapshot(SPEC, [tq(3)], [], NOW, 0, {"s/a": 0.030, "s/b": 0.032,
                                                         "b/a": 0.100, "b/b": 0.110},
                            None, [blocked("s/a/spot")])
    recorded = ticks.decision_to_dict(inputs.decide())
    again = ticks.decode(ticks.encode(inputs))
    assert isinstance(again, ticks.TickInputs)
    assert again.refusals == inputs.refusals
    assert ticks.differences(recorded, ticks.decision_to_dict(again.decide())) == []
    # a tick recorded before refusals were kept decodes with none
    old = ticks.encode(inputs)
    del old["refusals"]
    assert ticks.decode(old).refusals == ()  # type: ignore[union-attr]


# the reconcile loop with the in-memory driver and a real store (SQLite and PostgreSQL) -------
@pytest.fixture
def priced(database):
    types = [MachineTypeConfig(name=n, cores=1, memory_mb=1024, on_demand_price=p,
                               zones=["z"], markets=["on-demand"])
             for n, p in (("cheap", 0.05), ("dear", 0.08))]
    yield from loop_world(database, endpoint_config(
        name="ep", slots=1, max_machines=5, machine_types=types, boot_timeout=10_000,
        idle_timeout=10_000))


def pools_of(store):
    return {m.name: (m.info or {}).get("pool") for m in store.machines.find("ep")}


def test_a_refused_offer_is_blocked_and_the_next_cheapest_started_without_back_off(priced):
    store, driver, loop, clock = priced
    driver.refusing.pools = {"cheap/z/on-demand": 1}  # sold out once
    submit(store, 1)
    tick(loop)
    (m,) = store.machines.find("ep")
    assert m.state == M.FAILED and "InsufficientInstanceCapacity" in m.reason
    (r,) = store.refusals.of("ep")
    assert (r.pool, r.kind, r.failures, r.until) == ("cheap/z/on-demand", "capacity", 1,
                                                     clock.t + 180)
    ep = store.endpoints.get("ep")
    assert ep.backoff.failures == 0 and ep.state == EndpointState.OK  # not backed off
    assert "offers refused, tried elsewhere next" in ep.message
    assert store.endpoints.events("ep")[0]["state"] == "refused"
    clock.t += 1
    tick(loop)  # the next tick: the next cheapest offer
    assert pools_of(store)["ep-0002"] == "dear/z/on-demand"
    assert store.machines.get("ep-0002").state == M.BOOTING
    doc = store.ticks.latest("ep")
    assert [x["pool"] for x in doc["inputs"]["refusals"]] == ["cheap/z/on-demand"]
    status = {c["pool"]: c["status"] for c in doc["decision"]["candidates"]}
    assert status["cheap/z/on-demand"].startswith("refused (capacity) once, blocked for 179s")
    # the recorded tick replays to the same decision
    again = ticks.decode(doc["inputs"]).decide()
    assert ticks.differences(doc["decision"], ticks.decision_to_dict(again)) == []
    # the block runs out: more work goes to the cheap offer again, which now starts and is
    # forgotten
    clock.t += 180
    submit(store, 1)
    tick(loop)
    assert pools_of(store)["ep-0003"] == "cheap/z/on-demand"
    assert store.machines.get("ep-0003").state == M.BOOTING
    assert store.refusals.of("ep") == []


def test_a_refusal_again_doubles_the_block_and_other_errors_back_off(priced):
    store, driver, loop, clock = priced
    driver.refusing.pools = {"cheap/z/on-demand": 0, "dear/z/on-demand": 0}  # always
    submit(store, 1)
    tick(loop)
    clock.t += 1
    tick(loop)
    assert {r.pool: r.failures for r in store.refusals.of("ep")} == {
        "cheap/z/on-demand": 1, "dear/z/on-demand": 1}
    clock.t += 1
    tick(loop)  # every offer blocked: nothing to try, nothing backed off
    assert len(store.machines.find("ep")) == 2
    assert any("2 of 2 offers blocked" in r for r in store.ticks.latest("ep")["decision"][
        "reasons"])
    clock.t += 180
    tick(loop)  # the cheap one's block ran out: tried again, refused again: 6 minutes
    blocks = {r.pool: r for r in store.refusals.of("ep")}
    assert blocks["cheap/z/on-demand"].failures == 2
    assert blocks["cheap/z/on-demand"].until == clock.t + 360
    assert store.endpoints.get("ep").backoff.failures == 0
    # an error that is not about capacity backs the endpoint off, as before
    clock.t += 400
    driver.refusing.pools = {}
    driver.fail = "raise"
    tick(loop)
    ep = store.endpoints.get("ep")
    assert ep.state == EndpointState.ERROR and ep.backoff.failures == 1


def test_explain_names_the_blocked_offers():
    from controller.reconcile.whatif import format_explain

    r = blocked("s/a/spot")
    doc = {"endpoint": "ec2", "tick": 7, "at": NOW, "queues": [], "machines": [],
           "prices": {}, "budget": {}, "candidates": [], "started": [], "removed": [],
           "demand": 0.0, "reasons": [],
           "refusals": [r.to_dict(), blocked("s/b/spot", until=NOW - 1).to_dict()]}
    text = format_explain(doc)
    assert ("offers the cloud refused lately (not tried until their block ends):\n"
            "  s/a/spot: refused (capacity) once, blocked for 100s more: "
            "InsufficientInstanceCapacity") in text
    assert "s/b/spot" not in text  # its block had ended


def test_machines_not_tried_after_a_refusal_neither_block_nor_back_off(priced):
    """A Pulumi update stops at its first error: the machines it did not get to are
    `not tried` (drivers/base.py NOT_TRIED), their offers stay open."""
    from controller.drivers.base import NOT_TRIED, ApplyResult

    store, driver, loop, _ = priced
    real = driver.apply

    def stops_at_the_first_error(diff, fence=unfenced):
        r = real(diff, fence)
        if not r.errors:
            return r
        untried = {n: f"{NOT_TRIED}the update stopped at {min(r.errors)}" for n in r.created}
        driver.machines -= set(untried)
        return ApplyResult((), r.deleted, {**r.errors, **untried})

    driver.apply = stops_at_the_first_error
    driver.refusing.pools = {"cheap/z/on-demand": 1}
    submit(store, 2)
    tick(loop)  # two machines: the first refused, the second not tried
    reasons = sorted(m.reason for m in store.machines.find("ep"))
    assert "InsufficientInstanceCapacity" in reasons[0] and "not tried" in reasons[1]
    (r,) = store.refusals.of("ep")
    assert (r.pool, r.failures) == ("cheap/z/on-demand", 1)
    assert store.endpoints.get("ep").backoff.failures == 0
