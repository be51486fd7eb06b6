"""The simulator knows refusals (issue 24): a pool sold out for a while, or a rate; with the
per-offer blocklist the next cheapest offer starts in the same tick, without it (as before)
the endpoint backs off and the jobs wait; the fallback ladder and the simulator's config."""

from dataclasses import replace

import pytest

from controller.domain.pricing import PriceSeries
from controller.errors import ConfigError
from controller.simulate.engine import SimOptions, Simulation
from tests.unit.test_simulate_runtimes import _job, _setup


def _run(trace, **opts):
    cfg, _, spec, series = _setup()
    spec = replace(spec, diversity=0.0, headroom=0.0)
    return Simulation("cloudpilot", spec, trace, series,
                      SimOptions(boot_time=cfg.boot_time, **opts)).run()


def _waits(out):
    return {j.trace.id: j.starts[0] - j.trace.submit for j in out.jobs}


TRACE = [_job(i, 30.0 * i, 1200.0) for i in range(1, 11)]


def test_a_sold_out_pool_costs_no_wait_with_the_blocklist_and_a_back_off_without():
    base = _run(TRACE)
    cheapest = next(m.offer.pool for m in base.machines)
    assert cheapest == "c5.large/eu-west-1c/spot"  # the 1c zone is the cheaper one
    sold = ((cheapest, 0.0, 3600.0),)
    after = _run(TRACE, refusals=sold)
    assert after.refused >= 1
    assert all(m.offer.pool != cheapest for m in after.machines)
    # no job waits longer for it than one tick plus a boot
    w0, w1 = _waits(base), _waits(after)
    assert max(w1[i] - w0[i] for i in w0) <= 60.0 + 120.0
    before = _run(TRACE, refusals=sold, blocklist=False)
    assert before.refused > after.refused  # the same pool, again and again
    assert max(_waits(before).values()) > max(w1.values()) + 60.0  # backed off
    # once the pool is back, it is used again
    late = [_job(100, 4000.0, 600.0)]
    assert any(m.offer.pool == cheapest for m in _run(TRACE + late, refusals=sold).machines
               if m.created >= 3600.0)


def test_a_refusal_rate_is_seeded_and_every_job_still_runs():
    a = _run(TRACE, refusal_rate=0.5)
    b = _run(TRACE, refusal_rate=0.5)
    assert a.refused == b.refused > 0
    assert all(j.end is not None for j in a.jobs)


def test_sold_out_pools_from_the_config_and_a_file(tmp_path):
    from controller.simulate.run import SimConfig

    f = tmp_path / "sold-out.txt"
    f.write_text("# pool start end\nc5.large/eu-west-1a/spot 0 21600\n\n")
    cfg = SimConfig(refusals=[{"pool": "c5.large/eu-west-1c/spot", "start": 60, "end": 120}],
                    refusals_file=str(f))
    assert cfg.sold_out() == (("c5.large/eu-west-1c/spot", 60.0, 120.0),
                              ("c5.large/eu-west-1a/spot", 0.0, 21600.0))
    f.write_text("c5.large 0\n")
    with pytest.raises(ConfigError, match=":1: write 'pool start end'"):
        cfg.sold_out()


def test_a_slow_zone_is_measured_and_left_for_the_quick_one():
    _, _, spec, series = _setup()
    two = tuple(o for o in spec.offers if o.machine_type == "c5.large" and not o.spot
                and o.zone in ("eu-west-1a", "eu-west-1b"))
    spec = replace(spec, offers=two, diversity=0.0, headroom=0.0, boot_timeout=7200.0,
                   wait_cost=0.05, idle_timeout=60.0)
    trace = [_job(i, 600.0 * i, 300.0) for i in range(1, 13)]
    slow = (("*/eu-west-1a/*", 3600.0),)

    def run(s):
        out = Simulation("cloudpilot", s, trace, series,
                         SimOptions(boot_time=120.0, boot_times=slow)).run()
        return out, sorted(_waits(out).values())

    out, _ = run(spec)
    zones = [m.offer.zone for m in out.machines]
    assert zones[0] == "eu-west-1a" and set(zones[1:]) == {"eu-west-1b"}  # tried once
    # once the quick zone has delivered a machine, no job waits more than a tick and a boot
    w = _waits(out)
    assert max(w[i] for i in range(4, 13)) <= 60.0 + 120.0
    blind, waits = run(replace(spec, wait_cost=0.0))  # not weighed: the slow zone by name
    assert {m.offer.zone for m in blind.machines} == {"eu-west-1a"}
    assert waits[len(waits) // 2] >= 1200.0  # half the jobs wait 20 minutes or more


def test_the_simulator_tells_the_scheduler_of_interruptions_per_machine_hour():
    # the 1c spot pool's price passes its max from 600 s to 700 s: its machines are
    # interrupted, and the machine-hours and interruptions are measured per pool, as the
    # live loop does (with boot_times, when the scheduler is told what pools deliver)
    cfg, _, spec, series = _setup()
    pool = "c5.large/eu-west-1c/spot"
    flat = series["c5.large/eu-west-1c"].prices[0]
    series = {**series, "c5.large/eu-west-1c": PriceSeries((0.0, 600.0, 700.0),
                                                           (flat, 1.0, flat))}
    sim = Simulation("cloudpilot", replace(spec, diversity=0.0, headroom=0.0), TRACE, series,
                     SimOptions(boot_time=cfg.boot_time, boot_times=(("*/eu-west-1a/*", 120.0),)))
    out = sim.run()
    assert out.interruptions >= 1 and all(j.end is not None for j in out.jobs)
    assert sim.lost[pool] == out.interruptions
    assert sim.ran[pool] > 0
