"""Price-aware decisions on small cases worked out by hand.

Two machine types in two zones: `s` (2 cores, 4 GB, $0.10/h on demand) and `b` (8 cores,
16 GB, $0.40/h on demand). Spot per core-hour: s/a 0.015, s/b 0.016, b/a 0.0125, b/b 0.01375.
"""

from dataclasses import replace

from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState as M
from controller.domain.machines import MachineView
from controller.domain.matching import SlotOffer
from controller.domain.pricing import Offer
from controller.domain.scheduling import Budget, EndpointSpec, decide
from controller.domain.taskqueues import TaskQueue

NOW = 50_000.0
OFFERS = tuple(
    Offer(t, z, mk, cores, mem, od)
    for t, cores, mem, od in (("s", 2, 4096, 0.10), ("b", 8, 16384, 0.40))
    for z in ("a", "b")
    for mk in ("spot", "on-demand")
)
PRICES = {"s/a": 0.030, "s/b": 0.032, "b/a": 0.100, "b/b": 0.110}
# the cases below were worked out for the cheapest price per used core only (no size
# tolerance); test_the_smallest_type_within_the_tolerance_wins adds it
SPEC = EndpointSpec("ec2", SlotOffer("ec2", 8, 16384, frozenset({"linux"})), slots=8,
                    max_machines=20, max_starts_per_cycle=10, idle_timeout=60, offers=OFFERS,
                    size_tolerance=0.0)


def tq(waiting, tq_id=1, **req):
    return TaskQueue(tq_id, Requirements(**req), "alice", "g", 0, waiting)


def pools(d):
    return sorted(launch.pool for launch in d.launches)


def run(queues, machines=(), spec=SPEC, prices=PRICES, **kw):
    return decide(spec, queues, list(machines), NOW, len(machines), prices=prices, **kw)


def view(name, pool, busy=0, state=M.RUNNING, idle_for=0.0, free_cores=None):
    cores = 8 if pool.startswith("b/") else 2
    return MachineView(name, "ec2", state, NOW - 100, slots=cores, busy_slots=busy,
                       free_cores=cores - busy if free_cores is None else free_cores,
                       free_memory_mb=(16384 if cores == 8 else 4096) - busy * 512,
                       idle_since=None if busy else NOW - idle_for, last_seen=NOW, pool=pool)


def test_a_full_big_machine_is_cheapest_per_used_core():
    d = run([tq(8)])
    assert pools(d) == ["b/a/spot"]  # 0.100 / 8 used cores = 0.0125 < 0.015 (s/a)
    assert d.start == ("ec2-0001",)
    assert "$0.0125 per used core-hour" in d.launches[0].reason


def test_a_few_small_jobs_go_on_small_machines():
    # 3 jobs: b/a would use 3 of 8 cores (0.0333 per used core); s/a holds 2 at 0.015, then
    # the last job: s/a at 0.030 per used core beats b/a at 0.100
    assert pools(run([tq(3)])) == ["s/a/spot", "s/a/spot"]


def test_memory_limits_how_many_fit():
    # 3 GB jobs: one per small machine (4 GB), five per big one (16 GB)
    d = run([tq(5, memory_mb=3072)])
    assert pools(d) == ["b/a/spot"]  # 0.100 / 5 = 0.02 < 0.030 / 1
    d = run([tq(2, memory_mb=3072)])
    assert pools(d) == ["s/a/spot", "s/a/spot"]  # 0.030 / 1 < 0.100 / 2


def test_jobs_too_big_for_small_machines_go_on_big_ones():
    assert pools(run([tq(2, cores=4)])) == ["b/a/spot"]
    d = run([tq(2, cores=16)])
    assert d.start == ()
    assert any("task queue 1 (2 waiting) cannot run here: no endpoint can run it" in r
               for r in d.reasons)


def test_jobs_that_opt_out_of_spot_get_on_demand():
    d = run([tq(1, spot=False)])
    assert pools(d) == ["s/a/on-demand"]  # $0.10 beats $0.40 for one core; zone a by name
    assert d.launches[0].price == 0.10


def test_a_spot_price_above_max_closes_the_pool():
    d = run([tq(8)], prices={**PRICES, "b/a": 0.45})
    assert pools(d) == ["b/b/spot"]
    cand = {c.pool: c for c in d.candidates}
    assert cand["b/a/spot"].status == "spot price above max $0.4000/h"
    assert cand["b/b/spot"].started == 1
    spec = replace(SPEC, offers=tuple(replace(o, max_price=0.105) for o in OFFERS))
    assert pools(run([tq(8)], spec=spec)) == ["b/a/spot"]  # b/b (0.110) above its max now


def test_diversity_spreads_over_zones():
    spec = replace(SPEC, diversity=0.3)
    # first: every pool would hold the whole fleet (x 1.3): b/a (0.0125) wins; second: b/a
    # would hold all 16 cores (0.0125 x 1.3 = 0.01625), b/b half (0.01375 x 1.15 = 0.01581),
    # s/a 2 of 10 (0.015 x 1.06 = 0.0159): b/b
    assert pools(run([tq(16)], spec=spec)) == ["b/a/spot", "b/b/spot"]
    assert pools(run([tq(16)])) == ["b/a/spot", "b/a/spot"]  # no diversity: cheapest only


def test_free_capacity_is_used_before_starting():
    ms = [view("ec2-0001", "b/a/spot", busy=5), view("ec2-0002", "s/a/spot", state=M.BOOTING)]
    assert run([tq(5)], ms).start == ()  # 3 free on the busy one, 2 on the booting one
    assert pools(run([tq(6)], ms)) == ["s/a/spot"]

    # a machine whose one wide job takes all its cores holds nothing more, slots or not
    full = [replace(view("ec2-0001", "b/a/spot", busy=1, free_cores=0), free_memory_mb=0)]
    assert pools(run([tq(1)], full)) == ["s/a/spot"]


def test_spot_capacity_does_not_count_for_on_demand_jobs():
    ms = [view("ec2-0001", "b/a/spot")]
    d = run([tq(1, spot=False)], ms)
    assert pools(d) == ["s/a/on-demand"]


def test_a_priced_out_spot_machine_is_replaced_where_it_is_cheapest():
    ms = [view("ec2-0001", "b/a/spot", busy=3)]
    d = run([], ms, prices={**PRICES, "b/a": 0.50})
    assert [(r.name, r.to) for r in d.remove] == [("ec2-0001", M.STOPPING)]
    assert "spot price $0.5000/h of b/a/spot is above its max $0.4000/h" in d.remove[0].reason
    # its 3 jobs: s/a (0.015) holds 2, then one more s/a for the last
    assert pools(d) == ["s/a/spot", "s/a/spot"]
    assert d.start == ("ec2-0002", "ec2-0003") and d.wanted == d.start


def test_limits_cap_starts_and_spend():
    d = run([tq(40)], spec=replace(SPEC, max_starts_per_cycle=3))
    assert len(d.start) == 3 and any("capped by max_starts_per_cycle" in r for r in d.reasons)
    d = run([tq(40)], spec=replace(SPEC, max_spend_per_hour=0.25))
    assert len(d.start) == 2  # 2 x $0.10 fits in $0.25, a third does not
    assert any("capped by max_spend_per_hour" in r for r in d.reasons)
    ms = [view("ec2-0001", "b/a/spot", busy=8)]  # already spending $0.10
    d = run([tq(40)], ms, budget=Budget(spend_per_hour=0.25))
    assert len(d.start) == 1 and any("controller's max spend" in r for r in d.reasons)
    d = run([tq(40)], ms, budget=Budget(machines=3))
    assert len(d.start) == 2


def test_idle_machines_stop_most_expensive_first_unless_needed():
    ms = [view("ec2-0001", "s/a/spot", idle_for=100), view("ec2-0002", "b/b/spot", idle_for=100),
          view("ec2-0003", "s/b/spot", idle_for=10)]
    d = run([tq(1)], ms)
    # the job goes on the cheapest idle machine per core (b/b 0.01375 < s/a 0.015); s/a goes;
    # s/b has not been idle long enough
    assert [r.name for r in d.remove] == ["ec2-0001"]
    assert d.start == ()
    d = run([], ms)
    assert [r.name for r in d.remove] == ["ec2-0001", "ec2-0002"]  # 0.015/core before 0.01375


def test_candidates_explain_every_offer():
    d = run([tq(8)], prices={k: v for k, v in PRICES.items() if k != "s/b"})
    cand = {c.pool: c for c in d.candidates}
    assert len(cand) == len(OFFERS)
    assert cand["s/b/spot"].status == "no spot price known"
    assert cand["b/a/spot"].per_core_hour == 0.0125
    assert d.candidates[0].pool == "b/a/spot"  # sorted cheapest per core first


def test_priced_decide_is_pure():
    args = ([tq(13), tq(2, tq_id=2, cores=4, spot=False)], [view("ec2-0001", "s/a/spot", busy=1)])
    assert run(*args) == run(*args)


def test_the_smallest_type_within_the_tolerance_wins():
    # 8 jobs: b/a 0.0125 per used core, s/a 0.015 (20 % more): within a 25 % tolerance the
    # 2-core type wins (4 of them), within 10 % the 8-core one
    assert pools(run([tq(8)], spec=replace(SPEC, size_tolerance=0.25))) == ["s/a/spot"] * 4
    assert pools(run([tq(8)], spec=replace(SPEC, size_tolerance=0.10))) == ["b/a/spot"]


def test_a_machine_costs_as_long_as_its_longest_job():
    # one 4-core job of 10 h and four 1-core jobs of 10 h: one b holds them all
    # (0.100 x 10 h / 80 core-hours = 0.0125 per used core-hour, s/a 0.015)
    long = tq(1, cores=4, max_runtime=36000)
    assert pools(run([long, tq(4, tq_id=2, max_runtime=36000)])) == ["b/a/spot"]
    # the same with 1-hour 1-core jobs: beside the long job they would keep b's cores busy
    # 1 h of its 10 (0.100 x 10 / 44 = 0.0227); on s/a they cost 0.015, and b's 4 free
    # cores stay for later work
    assert pools(run([long, tq(4, tq_id=2, max_runtime=3600)])) == [
        "b/a/spot", "s/a/spot", "s/a/spot"]


def test_consolidation_drains_the_emptiest_within_a_budget_soonest_ending_first():
    ms = [view(f"ec2-000{i}", "b/a/spot", busy=b) for i, b in
          ((1, 1), (2, 2), (3, 6), (4, 8), (5, 1), (6, 7), (7, 8), (8, 8), (9, 8), (10, 8))]
    spec = replace(SPEC, drain_below=0.25, drain_budget=0.2)
    d = run([], ms, spec=spec)
    # at most 20 % of 10 machines at once; the emptiest using at most 25 % of their cores
    assert d.drain == ("ec2-0001", "ec2-0005") and d.start == () and d.remove == ()
    assert any("draining 2 of 10 machines" in r for r in d.reasons)
    # draining machines stay so, and take nothing while the others hold the waiting work
    drained = [replace(m, draining=m.name in d.drain) for m in ms]
    d2 = run([tq(2)], drained, spec=spec)
    assert d2.drain == ("ec2-0001", "ec2-0005") and d2.start == ()
    # waiting work only they can hold: the first one stops draining and takes it
    wide = run([tq(1, cores=7)], drained, spec=spec)
    assert "ec2-0001" not in wide.drain and wide.start == ()
    # an empty draining machine stops at once (no idle timeout); one holding a job never
    empty = [replace(m, busy_slots=0, free_cores=8, idle_since=NOW - 1)
             if m.name == "ec2-0001" else m for m in drained]
    d3 = run([], empty, spec=spec)
    assert [(r.name, r.reason) for r in d3.remove] == [
        ("ec2-0001", "drained: its last job ended")]
    # with work left over (a start), nothing new drains
    assert run([tq(80)], ms, spec=spec).drain == ()
    assert run([], ms, spec=replace(spec, drain_budget=0.0)).drain == ()
    # with predicted ends known, the machines whose jobs should end soonest drain first
    ends = {"ec2-0001": NOW + 7200, "ec2-0002": NOW + 60, "ec2-0005": NOW + 600}
    timed = [replace(m, busy_until=ends.get(m.name, NOW + 9000)) for m in ms]
    assert run([], timed, spec=spec).drain == ("ec2-0002", "ec2-0005")


def test_headroom_keeps_free_cores_for_work_on_its_way():
    ms = [view(f"ec2-000{i}", "b/a/spot", busy=8) for i in range(1, 5)]  # 32 cores, all busy
    spec = replace(SPEC, headroom=0.1)
    d = run([], ms, spec=spec)
    # 10 % of 32 live cores: 4 free cores wanted, none free: the cheapest that holds 4
    assert pools(d) == ["s/a/spot", "s/a/spot"]
    assert "headroom: 4 free cores wanted, 0 free" in d.reasons
    assert run([], ms).start == ()  # no headroom asked for: nothing starts
    # an idle machine that is the headroom is kept past its idle timeout
    idle = [*ms, view("ec2-0009", "b/b/spot", idle_for=100)]
    assert run([], idle, spec=spec).remove == ()
    assert [r.name for r in run([], idle).remove] == ["ec2-0009"]


def test_work_that_would_outlive_a_busy_machine_gets_a_machine_of_its_own():
    long_job = tq(1, max_runtime=36000)
    busy = view("ec2-0001", "b/a/spot", busy=2)
    ending = replace(busy, busy_until=NOW + 600)
    spec = replace(SPEC, extend_limit=1800.0)
    assert run([long_job], [ending]).start == ()  # no limit: it goes in the free cores
    assert pools(run([long_job], [ending], spec=spec)) == ["s/a/spot"]
    soon = replace(long_job, predicted_runtime=900.0)  # predicted to end with the others
    assert run([soon], [ending], spec=spec).start == ()
    assert run([long_job], [busy], spec=spec).start == ()  # its end not known: no limit


def test_strand_limit_leaves_a_job_that_would_keep_a_big_machine_up_to_a_small_one():
    job = tq(1, max_runtime=3600)  # outlives the busy machine's jobs by 50 min
    ending = replace(view("ec2-0001", "b/a/spot", busy=2), busy_until=NOW + 600)
    spec = replace(SPEC, strand_limit=7 * 3000.0 - 1)  # 7 other cores x 3,000 s is over it
    assert run([job], [ending]).start == ()  # no limit: it goes in the free cores
    assert pools(run([job], [ending], spec=spec)) == ["s/a/spot"]
    assert run([job], [ending], spec=replace(SPEC, strand_limit=7 * 3000.0)).start == ()
    soon = replace(job, predicted_runtime=600.0)  # predicted to end with the others
    assert run([soon], [ending], spec=spec).start == ()
