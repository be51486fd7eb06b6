"""Offers scored by what they deliver (issue 24): the measured boot latency, the share of
pilots that never registered and interruptions per machine-hour, per offer, priced as the
waiting work's delay and lost work, in the pure decision and in the recorded tick; measured
from the store's machine events."""

import json
from dataclasses import replace

import pytest

from controller.domain import ticks
from controller.domain.delivery import Delivery, summarize
from controller.domain.machines import MachineState as M
from controller.store import Store, views
from tests.unit.test_packing import NOW, PRICES, SPEC, pools, run, tq, view

EQUAL = replace(SPEC, offers=tuple(o for o in SPEC.offers if o.machine_type == "s"
                                   and o.market == "on-demand"), boot_timeout=900.0,
                wait_cost=0.05)


def test_launches_sum_up_per_offer_and_expect_a_delay():
    (a, b) = summarize([("p", 100.0), ("p", 300.0), ("p", None), ("q", None)])
    assert (a.pool, a.registered, a.boot_mean, a.never, a.launches) == ("p", 2, 200.0, 1, 3)
    # the mean boot, plus for a third that never registers half a boot_timeout more (1/3 /
    # (2/3) tries lost, each a timeout)
    assert a.expected_delay(900.0) == 200.0 + 0.5 * 900.0
    assert b.expected_delay(900.0) == pytest.approx(900.0 + 9 * 900.0)  # capped at 90 %
    assert Delivery("r", 4, 120.0, 0).expected_delay(900.0) == 120.0
    assert Delivery.from_dict(a.to_dict()) == a


def test_at_equal_prices_the_offer_that_delivers_wins():
    # two zones, the same type and price: zone a first by name when nothing is known
    assert pools(run([tq(2)], spec=EQUAL)) == ["s/a/on-demand"]
    slow = [Delivery("s/a/on-demand", 10, 3600.0, 0), Delivery("s/b/on-demand", 10, 120.0, 0)]
    d = run([tq(2)], spec=EQUAL, delivery=slow)
    assert pools(d) == ["s/b/on-demand"]
    assert "120s expected to a pilot (measured: boot 120s, 0 of 10 never registered)" in \
        d.launches[0].reason
    flaky = [Delivery("s/a/on-demand", 5, 100.0, 5), Delivery("s/b/on-demand", 5, 300.0, 0)]
    assert pools(run([tq(2)], spec=EQUAL, delivery=flaky)) == ["s/b/on-demand"]
    # with wait_cost 0 the measurements do not count
    assert pools(run([tq(2)], spec=replace(EQUAL, wait_cost=0.0), delivery=slow)) == [
        "s/a/on-demand"]
    # an offer not measured yet is taken to be quick: it gets tried (and measured)
    assert pools(run([tq(2)], spec=EQUAL, delivery=slow[1:])) == ["s/a/on-demand"]
    # a money difference larger than the delay's cost still wins: spot at a third of the price
    zone_a = replace(SPEC, offers=tuple(o for o in SPEC.offers if o.pool.startswith("s/a/")),
                     wait_cost=0.05)
    assert pools(run([tq(2)], spec=zone_a, delivery=[
        Delivery("s/a/on-demand", 10, 120.0, 0), Delivery("s/a/spot", 10, 600.0, 0)])) == [
        "s/a/spot"]


def test_interruptions_per_machine_hour_are_summed_up_and_priced():
    (a, b) = summarize([("p", 100.0), ("q", 100.0)],
                       [("p", 7200.0, True), ("p", 3600.0, False), ("q", 1800.0, False)])
    assert (a.hours, a.interruptions, a.interruption_rate) == (3.0, 1, pytest.approx(1 / 3))
    assert (b.hours, b.interruptions, b.interruption_rate) == (0.5, 0, 0.0)
    # one interruption within the first machine-hour is not an infinite rate
    assert Delivery("r", 1, 100.0, 0, 0.1, 1).interruption_rate == 1.0
    assert "1 interrupted in 3.0 machine-hours = 0.333/h" in a.describe(900.0)
    assert Delivery.from_dict(a.to_dict()) == a
    # a tick recorded before interruptions were measured decodes with none
    old = {k: v for k, v in a.to_dict().items() if k not in ("hours", "interruptions")}
    assert Delivery.from_dict(old) == Delivery("p", 1, 100.0, 0)
    # at equal prices and boots, the offer whose machines are interrupted loses the work;
    # jobs of an hour: one interruption an hour loses half an hour's work and a new wait
    hour = [tq(2, max_runtime=3600)]
    same = [Delivery("s/a/on-demand", 10, 120.0, 0, 20.0, 20),
            Delivery("s/b/on-demand", 10, 120.0, 0, 20.0, 0)]
    d = run(hour, spec=EQUAL, delivery=same)
    assert pools(d) == ["s/b/on-demand"]
    assert "0 of 10 never registered)" in d.launches[0].reason
    # a rare interruption (one in 200 machine-hours) costs less than a slower boot elsewhere
    rare = [Delivery("s/a/on-demand", 10, 120.0, 0, 200.0, 1),
            Delivery("s/b/on-demand", 10, 600.0, 0, 20.0, 0)]
    assert pools(run(hour, spec=EQUAL, delivery=rare)) == ["s/a/on-demand"]
    # with wait_cost 0 nothing measured counts
    assert pools(run(hour, spec=replace(EQUAL, wait_cost=0.0), delivery=same)) == [
        "s/a/on-demand"]


def test_a_machine_still_booting_counts_as_at_least_as_slow_as_it_is_so_far():
    # zone a's machine has been booting for 40 minutes: the quickest offer delivers in 2, so
    # it is not counted on, and new machines go to zone b, though a was as quick as b
    fast = [Delivery("s/a/on-demand", 10, 120.0, 0), Delivery("s/b/on-demand", 10, 120.0, 0)]
    booting = view("ec2-0001", "s/a/on-demand", state=M.BOOTING)
    booting = replace(booting, created_at=NOW - 2400)
    spec = replace(EQUAL, boot_timeout=7200.0)
    d = run([tq(4)], [booting], spec=spec, delivery=fast)
    assert pools(d) == ["s/b/on-demand", "s/b/on-demand"]
    young = replace(booting, created_at=NOW - 60)  # within its measured boot: no evidence
    assert pools(run([tq(4)], [young], spec=spec, delivery=fast)) == ["s/a/on-demand"]


def test_the_measurements_are_in_the_recorded_tick():
    slow = [Delivery("s/a/on-demand", 10, 3600.0, 0)]
    inputs = ticks.snapshot(EQUAL, [tq(2)], [], NOW, 0, PRICES, None, (), slow)
    again = ticks.decode(json.loads(json.dumps(ticks.encode(inputs))))
    assert again.delivery == tuple(slow)  # type: ignore[union-attr]
    assert ticks.differences(ticks.decision_to_dict(inputs.decide()),
                             ticks.decision_to_dict(again.decide())) == []


def test_the_store_measures_boots_and_pilots_that_never_came(database):
    store = Store(database)
    try:
        info = {"pool": "s/a/on-demand"}
        for name, boot in (("ep-0001", 60.0), ("ep-0002", None), ("ep-0003", "refused"),
                           ("ep-0004", "booting")):
            store.machines.create(name, "ep", int(name[-1]), "test", 1000.0, info=info)
            if boot == "refused":
                store.machines.move(name, M.FAILED, "InsufficientInstanceCapacity", 1001.0)
                continue
            store.machines.move(name, M.BOOTING, None, 1001.0)
            if boot is None:
                store.machines.move(name, M.FAILED, "no pilot after 900s", 1900.0)
            elif boot != "booting":
                store.machines.move(name, M.RUNNING, None, 1000.0 + boot)
        store.machines.create("old", "ep", 9, "test", 10.0, info=info)
        store.machines.move("old", M.BOOTING, None, 11.0)
        store.machines.move("old", M.RUNNING, None, 20.0)
        got = sorted(views.machine_deliveries(store, "ep", 500.0), key=str)
        assert got == [("s/a/on-demand", 60.0), ("s/a/on-demand", None)]
        # of the machines that ran: how long, and whether the cloud took them (lost)
        store.machines.move("ep-0001", M.LOST, "its pilot stopped heartbeating", 4660.0)
        store.machines.create("ep-0005", "ep", 5, "test", 1000.0, info=info)
        store.machines.move("ep-0005", M.BOOTING, None, 1001.0)
        store.machines.move("ep-0005", M.RUNNING, None, 1100.0)
        store.machines.move("ep-0005", M.STOPPING, "idle", 2900.0)
        store.machines.move("ep-0005", M.STOPPED, None, 2950.0)
        store.machines.create("ep-0006", "ep", 6, "test", 1000.0, info=info)
        store.machines.move("ep-0006", M.BOOTING, None, 1001.0)
        store.machines.move("ep-0006", M.RUNNING, None, 1200.0)
        runs = sorted(views.machine_runs(store, "ep", 500.0, 4800.0))
        assert runs == [("s/a/on-demand", 1800.0, False), ("s/a/on-demand", 3600.0, False),
                        ("s/a/on-demand", 3600.0, True)]
        (d,) = summarize(views.machine_deliveries(store, "ep", 500.0), runs)
        assert (d.hours, d.interruptions) == (2.5, 1)
    finally:
        store.close()
