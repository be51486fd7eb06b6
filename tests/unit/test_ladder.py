"""The fallback ladder (issue 24): a job waits for spot up to its deadline (`fallback_after`,
the job's or the endpoint's), then may get on-demand; `spot = false` never goes on spot,
`spot_only` never on demand; explain says which rung each new machine is on and why."""

import json
from dataclasses import replace

import pytest
from pydantic import ValidationError

from controller.api.schemas import RequirementsIn
from controller.domain import ticks
from controller.domain.jobs import Requirements
from controller.domain.refusals import Refusal
from controller.domain.taskqueues import TaskQueue
from tests.unit.test_packing import NOW, SPEC, pools, run

LADDER = replace(SPEC, fallback_after=600.0)
SPOT_SOLD_OUT = [Refusal(o.pool, "capacity", "InsufficientInstanceCapacity", 1, NOW,
                         NOW + 3600) for o in SPEC.offers if o.spot]


def waiting(n, waited, **req):
    return TaskQueue(1, Requirements(**req), "alice", "g", 0, n, oldest=NOW - waited)


def test_before_its_deadline_a_job_waits_for_spot_then_falls_back_to_on_demand():
    d = run([waiting(2, 100)], spec=LADDER)
    assert pools(d) == ["s/a/spot"]
    assert "(rung 1 of 2, spot: on-demand after 500s more)" in d.launches[0].reason
    # spot sold out everywhere: before the deadline nothing starts, the job waits for spot
    d = run([waiting(2, 100)], spec=LADDER, refusals=SPOT_SOLD_OUT)
    assert d.start == () and any("2 waiting jobs not covered" in r for r in d.reasons)
    # past it, the next rung
    d = run([waiting(2, 700)], spec=LADDER, refusals=SPOT_SOLD_OUT)
    assert pools(d) == ["s/a/on-demand"]
    assert ("(rung 2 of 2, on-demand: its oldest job waited 700s >= fallback_after 600s)"
            in d.launches[0].reason)
    # on the last rung the cheapest of every rung wins: spot, when it has some again
    assert pools(run([waiting(2, 700)], spec=LADDER)) == ["s/a/spot"]


def test_without_a_deadline_every_market_at_once():
    assert pools(run([waiting(2, 0)], refusals=SPOT_SOLD_OUT)) == ["s/a/on-demand"]


def test_a_jobs_own_deadline_wins_over_the_endpoints():
    d = run([waiting(2, 100, fallback_after=60.0)], spec=LADDER, refusals=SPOT_SOLD_OUT)
    assert pools(d) == ["s/a/on-demand"]
    d = run([waiting(2, 100, fallback_after=3600.0)], spec=replace(SPEC, fallback_after=0.0),
            refusals=SPOT_SOLD_OUT)
    assert d.start == ()


def test_spot_false_never_goes_on_spot_and_spot_only_never_on_demand():
    d = run([waiting(2, 0, spot=False)], spec=LADDER)
    assert pools(d) == ["s/a/on-demand"]  # no spot rung to wait on
    assert "rung" not in d.launches[0].reason
    d = run([waiting(2, 10 ** 6, spot_only=True)], spec=LADDER, refusals=SPOT_SOLD_OUT)
    assert d.start == ()
    d = run([waiting(2, 10 ** 6, spot_only=True)], refusals=SPOT_SOLD_OUT)
    assert d.start == ()
    assert pools(run([waiting(2, 0, spot_only=True)])) == ["s/a/spot"]
    on_demand_only = replace(SPEC, offers=tuple(o for o in SPEC.offers if not o.spot))
    d = run([waiting(2, 0, spot_only=True)], spec=on_demand_only)
    assert any("it needs spot machines (spot_only) and none is offered" in r
               for r in d.reasons)


def test_the_ladder_is_in_the_requirements_and_the_recorded_tick():
    plain = Requirements()
    assert "spot_only" not in plain.to_dict()  # older jobs keep their task queue keys
    req = Requirements(spot_only=True, fallback_after=90.0)
    assert Requirements.from_dict(req.to_dict()) == req
    with pytest.raises(ValidationError, match="spot_only and spot = false"):
        RequirementsIn(spot=False, spot_only=True)
    inputs = ticks.snapshot(LADDER, [waiting(2, 700)], [], NOW, 0,
                            {"s/a": 0.030, "s/b": 0.032, "b/a": 0.100, "b/b": 0.110},
                            None, SPOT_SOLD_OUT)
    again = ticks.decode(json.loads(json.dumps(ticks.encode(inputs))))
    assert again.queues == inputs.queues and again.spec == inputs.spec
    assert ticks.differences(ticks.decision_to_dict(inputs.decide()),
                             ticks.decision_to_dict(again.decide())) == []


def test_the_matcher_never_hands_a_spot_only_job_to_an_on_demand_machine():
    from controller.domain.matching import SlotOffer, machine_offer, why_not

    shape = SlotOffer("ec2", 2, 4096)
    on_demand = machine_offer(shape, 2, 4096, (), spot=False, on_demand=True)
    spot = machine_offer(shape, 2, 4096, (), spot=True)
    only = Requirements(spot_only=True)
    assert why_not(only, on_demand) == ("the job runs on spot machines only, ec2 offers "
                                        "on-demand")
    assert why_not(only, spot) is None
    assert why_not(only, shape) is None  # a machine of no market (a host, a batch slot)
    assert why_not(Requirements(), on_demand) is None
