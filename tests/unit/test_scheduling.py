from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState as M
from controller.domain.machines import MachineView
from controller.domain.matching import SlotOffer
from controller.domain.scheduling import EndpointSpec, decide
from controller.domain.taskqueues import TaskQueue

SPEC = EndpointSpec(name="ep", shape=SlotOffer("ep", 4, 8000, frozenset({"linux"})), slots=2,
                    max_machines=5, max_starts_per_cycle=3, idle_timeout=60, boot_timeout=300,
                    lost_after=30)
NOW = 10_000.0


def tq(waiting, tq_id=1, **req):
    return TaskQueue(tq_id, Requirements(**req), "alice", "g", 0, waiting)


def machine(name, state=M.RUNNING, busy=0, idle_since=NOW - 1, last_seen=NOW, created=NOW - 100,
            managed=True):
    return MachineView(name, "ep", state, created, slots=2, busy_slots=busy,
                       idle_since=None if busy else idle_since, last_seen=last_seen,
                       managed=managed)


def test_starts_machines_for_waiting_work_with_names():
    d = decide(SPEC, [tq(4)], [], NOW, last_seq=7)
    assert d.start == ("ep-0008", "ep-0009")  # 4 jobs, 2 per machine
    assert d.wanted == ("ep-0008", "ep-0009")
    assert d.demand == 2.0


def test_jobs_per_machine_from_cores():
    d = decide(SPEC, [tq(4, cores=4)], [], NOW, last_seq=0)
    assert len(d.start) == 3  # 4 machines wanted, 3 per cycle at most
    assert any("starting 3" in r and "max_starts_per_cycle 3" in r for r in d.reasons)


def test_caps_by_max_machines_and_counts_live_ones():
    ms = [machine(f"ep-000{i}", busy=2) for i in range(1, 5)]
    d = decide(SPEC, [tq(20)], ms, NOW, last_seq=4)
    assert d.start == ("ep-0005",)


def test_booting_machines_count_as_capacity():
    ms = [machine("ep-0001", state=M.BOOTING, created=NOW - 5)]
    assert decide(SPEC, [tq(2)], ms, NOW, last_seq=1).start == ()
    assert decide(SPEC, [tq(3)], ms, NOW, last_seq=1).start == ("ep-0002",)


def test_free_slots_of_running_machines_count():
    ms = [machine("ep-0001", busy=1)]
    assert decide(SPEC, [tq(1)], ms, NOW, last_seq=1).start == ()


def test_unfit_queues_are_reported_not_started_for():
    d = decide(SPEC, [tq(3, cores=8), tq(2, tq_id=2, tags=frozenset({"gpu"}))], [], NOW, 0)
    assert d.start == ()
    assert any("task queue 1 (3 waiting) cannot run here: needs 8 cores" in r for r in d.reasons)
    assert any("needs tags ['gpu']" in r for r in d.reasons)


def test_stops_exactly_the_idle_machines():
    ms = [machine("ep-0001", idle_since=NOW - 61), machine("ep-0002", busy=1),
          machine("ep-0003", idle_since=NOW - 10)]
    d = decide(SPEC, [], ms, NOW, last_seq=3)
    assert [(r.name, r.to) for r in d.remove] == [("ep-0001", M.STOPPING)]
    assert d.wanted == ("ep-0002", "ep-0003")
    assert "idle for 61s" in d.remove[0].reason


def test_no_idle_stop_while_work_waits():
    ms = [machine("ep-0001", idle_since=NOW - 600)]
    assert decide(SPEC, [tq(1)], ms, NOW, last_seq=1).remove == ()


def test_silent_machines_are_lost_and_stuck_boots_fail():
    ms = [machine("ep-0001", busy=2, last_seen=NOW - 31),
          machine("ep-0002", state=M.BOOTING, created=NOW - 301, last_seen=None)]
    d = decide(SPEC, [], ms, NOW, last_seq=2)
    assert {(r.name, r.to) for r in d.remove} == {("ep-0001", M.LOST), ("ep-0002", M.FAILED)}
    assert d.wanted == ()


def test_joined_pilots_are_capacity_but_not_the_drivers():
    ms = [machine("host-a", managed=False, idle_since=NOW - 600)]
    d = decide(SPEC, [tq(2)], ms, NOW, last_seq=0)
    assert d.start == ()  # its 2 free slots cover the 2 jobs
    assert d.wanted == ()  # not the driver's to create or delete
    assert decide(SPEC, [], ms, NOW, last_seq=0).remove == ()


def test_decide_is_pure():
    args = (SPEC, [tq(5)], [machine("ep-0001", busy=2)], NOW, 1)
    assert decide(*args) == decide(*args)
