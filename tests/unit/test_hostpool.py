"""The SSH endpoint's decision (domain.hostpool): pure, time injected."""

from controller.domain.hostpool import Backoff, HostView, Membership, decide_hosts
from controller.domain.jobs import Requirements
from controller.domain.machines import TRANSITIONS, check_transition
from controller.domain.machines import MachineState as M
from controller.domain.matching import SlotOffer
from controller.domain.scheduling import EndpointSpec
from controller.domain.taskqueues import TaskQueue

SHAPE = SlotOffer("lab", 2, 4096, frozenset({"linux"}))
SPEC = EndpointSpec(name="lab", shape=SHAPE, slots=2, max_starts_per_cycle=2, idle_timeout=30,
                    boot_timeout=60, lost_after=10)
NOW = 1_000.0


def tq(waiting, tq_id=1, **req):
    return TaskQueue(tq_id, Requirements(**req), "alice", "g", 0, waiting)


def host(name, state=M.STOPPED, membership=Membership.MEMBER, busy=0, idle_since=None,
         last_seen=NOW, since=NOW - 5, shape=SHAPE, failures=0, last_failure_at=None, slots=2):
    return HostView(f"lab-{name}", membership, state, since, slots, shape, busy,
                    idle_since if idle_since is not None or busy else NOW - 1, last_seen,
                    failures, last_failure_at)


def names(d):
    return {r.name: r.to for r in d.decision.remove}


def test_starts_pilots_on_idle_hosts_only_for_waiting_work():
    hosts = [host("a"), host("b"), host("c")]
    assert decide_hosts(SPEC, [], hosts, NOW).decision.start == ()
    d = decide_hosts(SPEC, [tq(3)], hosts, NOW).decision
    assert d.start == ("lab-a", "lab-b")  # 2 slots each: 3 jobs need two hosts
    assert d.wanted == ("lab-a", "lab-b")


def test_free_slots_of_running_hosts_take_work_first():
    hosts = [host("a", M.RUNNING, busy=1), host("b")]
    assert decide_hosts(SPEC, [tq(1)], hosts, NOW).decision.start == ()
    assert decide_hosts(SPEC, [tq(2)], hosts, NOW).decision.start == ("lab-b",)


def test_per_host_shape_and_slots_decide_what_fits():
    big = SlotOffer("lab", 8, 16384, frozenset({"linux"}))
    hosts = [host("small"), host("big", shape=big, slots=4)]
    d = decide_hosts(SPEC, [tq(1, cores=4)], hosts, NOW).decision
    assert d.start == ("lab-big",)
    d = decide_hosts(SPEC, [tq(2, cores=16)], hosts, NOW).decision
    assert d.start == () and any("cannot run here: needs 16 cores" in r for r in d.reasons)


def test_max_starts_per_cycle_caps_and_says_so():
    hosts = [host(n) for n in "abcd"]
    d = decide_hosts(SPEC, [tq(8)], hosts, NOW).decision
    assert len(d.start) == 2 and any("max_starts_per_cycle 2" in r for r in d.reasons)


def test_idle_pilots_stop_after_the_idle_timeout_unless_work_fits():
    hosts = [host("a", M.RUNNING, idle_since=NOW - 31), host("b", M.RUNNING, idle_since=NOW - 5)]
    assert names(decide_hosts(SPEC, [], hosts, NOW)) == {"lab-a": M.STOPPING}
    # waiting work goes to the most recently busy host first, so the longest idle one can go
    assert names(decide_hosts(SPEC, [tq(1)], hosts, NOW)) == {"lab-a": M.STOPPING}
    assert names(decide_hosts(SPEC, [tq(3)], hosts, NOW)) == {}
    # work that does not fit the idle host does not keep it
    assert names(decide_hosts(SPEC, [tq(1, tags=frozenset({"gpu"}))], hosts, NOW)) == {
        "lab-a": M.STOPPING}


def test_silent_pilots_are_lost_and_stuck_deploys_fail():
    hosts = [host("a", M.RUNNING, busy=2, last_seen=NOW - 11),
             host("b", M.BOOTING, since=NOW - 61)]
    assert names(decide_hosts(SPEC, [], hosts, NOW)) == {"lab-a": M.LOST, "lab-b": M.FAILED}


def test_failed_hosts_are_retried_with_backoff_and_not_given_work():
    backoff = Backoff(first=10, cap=40)
    assert [backoff.delay(n) for n in range(6)] == [0, 10, 20, 40, 40, 40]
    down = host("a", M.UNREACHABLE, failures=2, last_failure_at=NOW - 15)
    d = decide_hosts(SPEC, [tq(4)], [down, host("b")], NOW, backoff)
    assert d.retry == () and d.decision.start == ("lab-b",)
    d = decide_hosts(SPEC, [tq(4)], [down, host("b")], NOW + 6, backoff)
    assert d.retry == ("lab-a",)
    lost = host("c", M.LOST)
    assert decide_hosts(SPEC, [], [lost], NOW, backoff).retry == ("lab-c",)


def test_joining_hosts_are_probed_and_hosts_that_left_are_stopped():
    joining = host("new", None, Membership.JOINING, shape=None)
    gone = host("old", M.RUNNING, Membership.LEFT, busy=1)
    d = decide_hosts(SPEC, [tq(2)], [joining, gone], NOW)
    assert d.probe == ("lab-new",)
    assert names(d) == {"lab-old": M.STOPPING}
    assert d.decision.start == ()  # a joining host takes no work before it answers


def test_every_ssh_edge_is_in_the_table_with_a_reason():
    for old, new in [(M.STOPPED, M.REQUESTED), (M.REQUESTED, M.UNREACHABLE),
                     (M.LOST, M.UNREACHABLE), (M.UNREACHABLE, M.STOPPED),
                     (M.STOPPING, M.UNREACHABLE), (M.FAILED, M.STOPPED)]:
        assert check_transition(old, new) == TRANSITIONS[(old, new)]
    assert (M.UNREACHABLE, M.RUNNING) not in TRANSITIONS


def test_an_endpoint_taken_down_starts_nothing_and_stops_its_pilots():
    from controller.domain.hostpool import take_down

    hosts = [host("a", M.RUNNING, busy=1), host("b"), host("c", M.RUNNING, last_seen=NOW - 60),
             host("d", None, Membership.JOINING, shape=None)]
    d = take_down(decide_hosts(SPEC, [tq(4)], hosts, NOW), hosts, "alice")
    assert d.decision.start == () and d.decision.wanted == ()
    assert names(d) == {"lab-a": M.STOPPING, "lab-c": M.LOST}  # the lost verdict stands
    assert d.probe == ("lab-d",)
