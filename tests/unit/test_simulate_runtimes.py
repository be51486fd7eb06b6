"""The simulator's run times on small synthetic traces (seconds): the predictor learns only
from jobs that have ended (no peeking at a job's own run time), the oracle is told the true
run times, and the report's gap decomposition sums to the cost above the bound."""

import math
from pathlib import Path

import pytest

from controller.domain.pricing import PriceSeries
from controller.simulate.engine import SimOptions, Simulation
from controller.simulate.report import GAP_PARTS, WIDTHS
from controller.simulate.run import load_config, simulate
from controller.simulate.trace import TraceJob

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "simulate-c5.toml"


def _setup():
    cfg, ep = load_config(CONFIG)
    spec = ep.spec()
    # a flat price per pool: 1 cent per core-hour, the 1c zone a little cheaper
    series = {o.price_key: PriceSeries((0.0,), (o.cores * (0.009 if o.zone.endswith("c")
                                                          else 0.01),))
              for o in spec.offers if o.spot}
    return cfg, ep, spec, series


def _job(i, submit, run, cores=1, user="a", request=7200.0):
    return TraceJob(i, submit, run, cores, request, -1, user, "g")


def test_predictions_learn_only_from_jobs_that_ended():
    cfg, _, spec, series = _setup()
    trace = [_job(1, 0, 600), _job(2, 10, 600), _job(3, 3000, 100), _job(4, 3000, 50, user="b")]
    sim = Simulation("cloudpilot", spec, trace, series, SimOptions(boot_time=cfg.boot_time))
    out = sim.run()
    jobs = {j.trace.id: j for j in out.jobs}
    assert all(j.end is not None for j in jobs.values())
    # job 2 started before job 1 ended: nothing known yet, the request
    assert jobs[2].starts[0] < jobs[1].end
    assert jobs[2].predicted == 7201.0  # the max_runtime the simulator gives it
    # job 3 came after both: the mean of their real run times; bob's job knows nothing of a's
    assert jobs[3].predicted == 600.0
    assert jobs[4].predicted == 7201.0


def test_the_oracle_is_told_each_true_run_time():
    cfg, _, spec, series = _setup()
    trace = [_job(1, 0, 600), _job(2, 10, 50), _job(3, 3000, 100)]
    out = Simulation("oracle", spec, trace, series, SimOptions(boot_time=cfg.boot_time),
                     runtimes="oracle").run()
    assert sorted((j.trace.id, j.predicted) for j in out.jobs) == [(1, 600), (2, 50), (3, 100)]
    with pytest.raises(ValueError):
        Simulation("x", spec, trace, series, SimOptions(), runtimes="psychic")


def test_the_gap_decomposition_sums_to_the_cost_above_the_bound():
    cfg, ep, _, series = _setup()
    trace = [_job(i, 40.0 * i, 300.0 + 97 * (i % 7), cores=1 + (i * 5) % 24, user=f"u{i % 3}")
             for i in range(120)]
    res = simulate(trace, series, cfg, ep, ["cloudpilot", "oracle"])
    for r in res.reports:
        assert set(r.gap) == set(GAP_PARTS)
        assert math.isclose(sum(r.gap.values()), r.cost - res.lower_bound.cost,
                            rel_tol=1e-9, abs_tol=1e-9)
        for part in ("boot", "idle", "stranded", "lost"):
            assert r.gap[part] >= -1e-9
        assert r.gap["boot"] > 0 and r.gap["stranded"] > 0
        # every finished job's wait is in one width row, split by cause
        assert sum(w.jobs for w in r.waits) == r.jobs_done
        assert all(any(lo == w.lo for lo, _ in WIDTHS) for w in r.waits)
        for w in r.waits:
            assert w.p95 >= 0 and all(v >= 0 for v in w.by_cause.values())


def test_waits_are_explained_by_the_limit_that_held_them():
    """A wait while decisions left work uncovered is put down to what did: a count cap, a
    spend limit, or no open offer (prices above the max); boots and room apart."""
    from dataclasses import replace

    from controller.simulate.engine import _short_cause
    from controller.simulate.report import CAUSES, waits_by_width

    assert _short_cause(("starting 3: capped by max_machines", "9 waiting jobs not covered "
                         "this tick (limits above)")) == "cap"
    assert _short_cause(("starting 0: capped by max_spend_per_hour", "x not covered")) == (
        "budget")
    assert _short_cause(("9 waiting jobs not covered this tick (limits above)",)) == "price"
    cfg, _, spec, series = _setup()
    one = replace(spec, max_machines=1, headroom=0.0)  # one machine at a time
    # the first job's machine is started after it came; the others came after that machine
    trace = [_job(i, 0 if i == 0 else 100, 600, cores=72) for i in range(3)]
    out = Simulation("cloudpilot", one, trace, series, SimOptions(boot_time=cfg.boot_time)).run()
    (row,) = waits_by_width(out)
    assert set(row.by_cause) == set(CAUSES)
    assert row.by_cause["cap"] > 0 and row.by_cause["budget"] == row.by_cause["price"] == 0
    dear = {k: PriceSeries((0.0, 1200.0), (100.0, s.at(0.0))) for k, s in series.items()}
    spot = replace(spec, offers=tuple(o for o in spec.offers if o.spot))
    # every spot price above its max for the first 20 minutes (a job coming at 1,300 s wakes
    # the scheduler: it decides again when something changes, not when a price falls)
    late = [trace[0], _job(9, 1300, 600, cores=72)]
    out = Simulation("cloudpilot", spot, late, dear, SimOptions(boot_time=cfg.boot_time)).run()
    (row,) = waits_by_width(out)
    assert row.by_cause["price"] > 0 and row.by_cause["cap"] == 0
