"""The simulator on a slice of the real LCG-2005 trace with real eu-west-1 spot prices:
conservation (every job ends exactly once, no machine runs a job larger than itself, cost is
the integral of price over machine lifetimes), and the command's outputs."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from controller.drivers.prices import read_history
from controller.simulate.policies import POLICIES
from controller.simulate.run import load_config, map_prices, simulate
from controller.simulate.trace import TraceJob, read_swf

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
TRACE = DATA / "traces" / "LCG-2005-1.swf.gz"
PRICES = DATA / "spot-prices" / "aws-spot-eu-west-1_2022-03-09_2022-06-07.tsv.xz"
CONFIG = REPO / "examples" / "simulate-c5.toml"
pytestmark = pytest.mark.skipif(not (TRACE.exists() and PRICES.exists()),
                                reason=f"the LCG trace and spot prices are not in {DATA}")


@pytest.fixture(scope="module")
def result():
    cfg, ep = load_config(CONFIG)
    trace = read_swf(TRACE, limit=1500)
    giant = TraceJob(10**9, 600.0, 60.0, 512, 100.0, -1, "u", "g")  # no c5 holds 512 cores
    series, _ = map_prices(read_history(PRICES, {t.name for t in ep.machine_types}),
                           cfg.price_start)
    return trace, simulate([*trace, giant], series, cfg, ep)


def test_every_job_ends_exactly_once(result):
    trace, res = result
    assert [r.policy for r in res.reports] == list(POLICIES)
    for out in res.outcomes:
        assert len(out.jobs) == len(trace)
        assert all(j.ends == 1 and j.end is not None for j in out.jobs), out.policy
        assert all(j.end >= j.starts[-1] + j.trace.run - 1e-6 for j in out.jobs)
        assert all(j.starts[0] >= j.trace.submit for j in out.jobs)
        assert [j.id for j in out.unfit] == [10**9]  # reported apart, not dropped
        # interrupted runs come back: starts = 1 + times the job was rescheduled
        assert sum(len(j.starts) - 1 for j in out.jobs) == out.rescheduled


def test_no_machine_runs_a_job_larger_than_itself(result):
    _, res = result
    for out in res.outcomes:
        for m in out.machines:
            cores, mem = m.largest_job
            assert cores <= m.offer.cores and mem <= m.offer.memory_mb
            assert m.free_cores == m.offer.cores and m.free_slots == m.offer.n_slots


def test_cost_is_the_integral_of_price_over_machine_lifetimes(result):
    _, res = result
    for out, rep in zip(res.outcomes, res.reports, strict=True):
        total = 0.0
        for m in out.machines:
            assert m.ended is not None and m.ended >= m.created
            if not m.offer.spot:
                total += m.offer.on_demand_price * (m.ended - m.created) / 3600
                continue
            s = out.series[m.offer.price_key]
            # walk the steps by hand: each price holds until the next change
            t, acc = m.created, 0.0
            changes = [x for x in s.times if m.created < x < m.ended] + [m.ended]
            for nxt in changes:
                acc += s.at(t) * (nxt - t)
                t = nxt
            total += acc / 3600
        assert rep.cost == pytest.approx(total, rel=1e-9), out.policy


def test_the_report_compares_policies_with_the_lower_bound(result):
    _, res = result
    lb = res.lower_bound
    assert lb.cost > 0 and lb.pool.endswith("/spot")
    by = {r.policy: r for r in res.reports}
    for r in res.reports:
        assert r.cost >= lb.cost  # nothing beats perfect packing at the cheapest price
        assert r.vs_lower_bound == pytest.approx(r.cost / lb.cost)
        assert 0 < r.utilization <= 1
    assert by["cloudpilot"].cost < by["on-demand-elastic"].cost
    assert by["on-demand-static"].interruptions == 0


def test_policies_differ_only_in_the_spec(result):
    from controller.simulate.policies import make_policy

    _, ep = load_config(CONFIG)
    trace, _ = result
    spec = ep.spec()
    od = make_policy("on-demand-elastic", spec, trace, {})
    assert all(not o.spot for o in od.spec.offers) and od.spec == replace(
        spec, offers=tuple(o for o in spec.offers if not o.spot))
    # the oracle is cloudpilot told the true run times
    oracle, cp = make_policy("oracle", spec, trace, {}), make_policy("cloudpilot", spec, trace, {})
    assert oracle.spec == cp.spec == spec
    assert (oracle.runtimes, cp.runtimes) == ("oracle", "predicted")


def test_the_command_writes_a_table_json_and_plots(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "controller", "simulate", "--trace", str(TRACE), "--prices",
         str(PRICES), "--config", str(CONFIG), "--limit", "300", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "lower bound:" in r.stdout and "cloudpilot" in r.stdout
    assert "300/300 jobs" in r.stderr  # the progress bar's last state
    doc = json.loads((tmp_path / "report.json").read_text())
    assert [p["policy"] for p in doc["policies"]] == list(POLICIES)
    assert {p.name for p in tmp_path.glob("*.png")} >= {"queue-and-spend.png",
                                                        "machines-cloudpilot.png"}
    bad = subprocess.run(
        [sys.executable, "-m", "controller", "simulate", "--trace", str(tmp_path / "x.swf"),
         "--prices", str(PRICES), "--config", str(CONFIG)], cwd=REPO, capture_output=True,
        text=True, timeout=60)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


CTC = DATA / "traces" / "CTC-SP2-1996-3.1-cln.swf.gz"


@pytest.mark.skipif(not CTC.exists(), reason=f"the CTC-SP2 trace is not in {DATA}")
def test_skipping_quiet_ticks_changes_nothing(monkeypatch):
    """The replay skips ticks where decide() would decide nothing new; on a slice of the
    multi-core CTC-SP2 trace the outcome is the same as calling it at every tick."""
    from controller.simulate.engine import SimOptions, Simulation

    cfg, ep = load_config(CONFIG)
    trace = read_swf(CTC, limit=400)
    series, _ = map_prices(read_history(PRICES, {t.name for t in ep.machine_types}),
                           cfg.price_start)
    opts = SimOptions(boot_time=cfg.boot_time, tick=cfg.tick)
    quiet = Simulation._quiet
    for spec in (replace(ep.spec(), headroom=0.0), replace(ep.spec(), headroom=0.05),
                 replace(ep.spec(), extend_limit=600.0)):
        outcomes = []
        for skip in (True, False):
            monkeypatch.setattr(Simulation, "_quiet", quiet if skip else lambda self: False)
            out = Simulation("cloudpilot", spec, trace, series, opts).run()
            outcomes.append(([(j.starts, j.end, j.machine) for j in out.jobs],
                             [(m.name, m.offer.pool, m.created, m.ended)
                              for m in out.machines]))
        assert outcomes[0] == outcomes[1]
        assert len(outcomes[0][1]) > 1 and all(j[1] is not None for j in outcomes[0][0])


def test_the_lower_bound_puts_each_job_on_the_cheapest_type_that_holds_it():
    from controller.domain.pricing import Offer
    from controller.simulate.report import lower_bound

    small, big = Offer("s", "a", "on-demand", 2, 4096, 0.02), Offer(
        "b", "a", "on-demand", 8, 16384, 0.24)  # 0.01 and 0.03 per core-hour
    lb = lower_bound({(1, 1024): 100.0, (4, 1024): 10.0, (2, 8000): 5.0}, (small, big), {},
                     0.0, 3600.0)
    # 1-core jobs fit s (0.01); 4-core jobs and 8 GB jobs only b (0.03)
    assert lb.cost == pytest.approx(100 * 0.01 + 15 * 0.03)
    assert lb.by_pool == {"s/a/on-demand": 100.0, "b/a/on-demand": 15.0}
    assert lb.pool == "s/a/on-demand" and lb.core_hours == 115.0
    assert math.isnan(lower_bound({(16, 1024): 1.0}, (small, big), {}, 0.0, 1.0).cost)
