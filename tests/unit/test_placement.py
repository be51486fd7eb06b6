"""The placement rule the simulator and the live matcher share (domain/placement.py)."""

import math
from dataclasses import replace

from controller.domain.jobs import Requirements
from controller.domain.matching import SlotOffer
from controller.domain.placement import (
    Asking,
    AskingPilots,
    Running,
    busy_until,
    choose,
    leave_to_fuller,
    placement_order,
    shadow_time,
)
from controller.domain.taskqueues import TaskQueue

WHOLE = SlotOffer("ec2", 8, 16000)
NOW = 1000.0


def free(cores, mem=None):
    return SlotOffer("ec2", cores, mem if mem is not None else cores * 2000)


def tq(i, cores=1, runtime=3600):
    return TaskQueue(i, Requirements(cores=cores, memory_mb=1000, max_runtime=runtime),
                     "alice", "g", 0, 1)


def test_the_fullest_machine_asking_gets_the_job():
    a, b, c = Asking("a", free(6)), Asking("b", free(2)), Asking("c", free(1))
    assert [x.machine for x in placement_order([a, b, c])] == ["c", "b", "a"]
    one, two = Requirements(cores=1), Requirements(cores=2)
    # a leaves 1-core work to c, the fullest; c keeps it
    assert leave_to_fuller(one, a, [a, b, c]) and not leave_to_fuller(one, c, [a, b, c])
    # a 2-core job does not fit c: b, the fullest that can hold it, keeps it
    assert not leave_to_fuller(two, b, [a, b, c]) and leave_to_fuller(two, a, [a, b, c])
    # alone, a takes anything it can hold
    assert not leave_to_fuller(two, a, [a])


def test_the_machine_busy_longest_comes_before_the_fullest():
    """A job placed on the machine whose running jobs end last extends its life least; the
    machine about to empty gets nothing new and stops."""
    ending = Asking("ending", free(1), busy_until([Running(7, 1000, NOW + 60)]))
    lasting = Asking("lasting", free(6), busy_until([Running(2, 1000, NOW + 36000)]))
    idle = Asking("idle", free(0 + 8))
    assert [x.machine for x in placement_order([idle, ending, lasting])] == [
        "lasting", "ending", "idle"]
    assert leave_to_fuller(Requirements(), ending, [ending, lasting, idle])
    assert busy_until([]) == 0.0


def test_asking_pilots_come_and_go():
    asking = AskingPilots()
    asking.enter("p1", Asking("a", free(2)))
    asking.enter("p2", Asking("b", free(4)))
    assert {x.machine for x in asking.now()} == {"a", "b"}
    asking.leave("p1")
    assert [x.machine for x in asking.now()] == ["b"]
    assert not asking.deferred()
    assert asking.defer(True) and asking.deferred() and not asking.deferred()


def test_machines_alike_leave_no_work_to_each_other():
    # a thousand idle pilots of one type asking together: whichever asks takes the job (before,
    # the name broke the tie and each left it to the next, and all of them were woken)
    alike = [Asking(f"m{i}", free(4)) for i in range(5)]
    assert not any(leave_to_fuller(Requirements(), a, alike) for a in alike)
    asking = AskingPilots()
    for i, a in enumerate(alike):
        asking.enter(f"p{i}", a)
    assert asking.fuller("p4", [Requirements()]) == []
    fuller = Asking("full", free(1))
    asking.enter("pf", fuller)
    assert asking.fuller("p4", [Requirements()]) == ["pf"]
    assert leave_to_fuller(Requirements(), alike[0], [*alike, fuller])
    # what a match weighs: only the machines fuller than it (issue 19: once per look)
    assert asking.now(than=alike[0]) == [fuller] and asking.now(than=fuller) == []


def test_asking_pilots_are_read_while_other_threads_come_and_go():
    # the match route's threads enter and leave while one looks for fuller machines (a
    # bench.load run with 1,000 pilots saw "dictionary changed size during iteration")
    import sys
    import threading
    asking = AskingPilots()
    asking.enter("me", Asking("mine", free(8)))
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set() and n < 200_000:
            asking.enter(f"p{n}", Asking(f"m{n}", free(1 + n % 4)))
            asking.leave(f"p{n - 2000}")
            n += 1

    t = threading.Thread(target=churn)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    t.start()
    try:
        for _ in range(300):
            asking.fuller("me", [Requirements()])
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert asking.fuller("me", [Requirements(cores=64)]) == []


def test_shadow_time_is_when_enough_running_jobs_end():
    running = [Running(2, 4000, NOW + 300), Running(4, 8000, NOW + 100)]
    assert shadow_time(Requirements(cores=2, memory_mb=1000), free(2), running, NOW) == NOW
    assert shadow_time(Requirements(cores=6, memory_mb=1000), free(2), running, NOW) == \
        NOW + 100
    assert shadow_time(Requirements(cores=8, memory_mb=1000), free(2), running, NOW) == \
        NOW + 300
    assert shadow_time(Requirements(cores=9, memory_mb=1000), free(2), running, NOW) == \
        math.inf


def test_a_wide_job_reserves_cores_and_narrow_ones_backfill_only_before_it():
    running = [Running(6, 6000, NOW + 200)]  # 2 cores free, 6 more in 200 s
    wide, long_narrow, short_narrow = tq(1, cores=4), tq(2, runtime=3600), tq(3, runtime=100)
    order = [wide, long_narrow, short_narrow]  # fair share puts the wide job first
    # the wide job does not fit 2 free cores: they are held for it; a 100 s job ends before
    # the reservation's start, a 1 h one would delay it
    assert choose(order, free(2), WHOLE, running, NOW, reserve_limit=300) == short_narrow
    assert choose(order[:2], free(2), WHOLE, running, NOW, reserve_limit=300) is None
    # a reservation further off than the limit is not made: cores are not held idle long
    assert choose(order, free(2), WHOLE, running, NOW, reserve_limit=100) == long_narrow
    # without the machine's whole size (no reservations): the first that fits now
    assert choose(order, free(2), None, running, NOW, reserve_limit=300) == long_narrow
    # a job the machine can never hold makes no reservation
    assert choose([tq(4, cores=16), long_narrow], free(2), WHOLE, running, NOW, 300) == \
        long_narrow
    # a queue with no job waiting any more holds nothing
    assert choose(order, free(2), WHOLE, running, NOW, 300,
                  waits=lambda q: q.id != 1) == long_narrow
    # the head fits: it goes first; skipped queues are passed over
    assert choose(order, free(8), WHOLE, [], NOW, 300) == wide
    assert choose(order, free(8), WHOLE, [], NOW, 300, skip={1}) == long_narrow


def test_predicted_run_times_decide_backfill_and_how_long_a_machine_is_kept():
    running = [Running(6, 12000, NOW + 600)]
    wide, narrow = tq(1, cores=8), tq(2, runtime=7200)
    # asked for 2 h: it would delay the wide job's reservation, so it waits
    assert choose([wide, narrow], free(2), WHOLE, running, NOW, 900) is None
    # predicted to take 5 min (its owner's recent runs): it backfills
    quick = replace(narrow, predicted_runtime=300.0)
    assert quick.runtime == 300.0 and narrow.runtime == 7200.0
    assert choose([wide, quick], free(2), WHOLE, running, NOW, 900) is quick
    # extend_limit: a job that should outlive the machine's other jobs by more than the limit
    # goes elsewhere (the machine empties and stops); an empty machine takes it
    assert choose([narrow], free(2), WHOLE, running, NOW, 0, extend_limit=1800) is None
    assert choose([quick], free(2), WHOLE, running, NOW, 0, extend_limit=1800) is quick
    assert choose([narrow], WHOLE, WHOLE, [], NOW, 0, extend_limit=1800) is narrow


def test_strand_limit_weighs_how_long_a_job_outlives_a_machine_by_the_cores_it_keeps_up():
    # an 8-core machine whose 6-core job should end in 10 min; a 1-core job that should run
    # 1 h outlives it by 50 min with 7 other cores up: 7 x 3,000 = 21,000 core-seconds
    running = [Running(6, 12000, NOW + 600)]
    narrow, wide = tq(1, runtime=3600), tq(2, cores=2, runtime=3600)
    assert choose([narrow], free(2), WHOLE, running, NOW, 0, strand_limit=20_000) is None
    assert choose([narrow], free(2), WHOLE, running, NOW, 0, strand_limit=21_000) is narrow
    # a 2-core job of the same length keeps only 6 other cores up: 18,000
    assert choose([wide], free(2), WHOLE, running, NOW, 0, strand_limit=20_000) is wide
    # predicted to end with the machine's job: it strands nothing
    quick = replace(narrow, predicted_runtime=500.0)
    assert choose([quick], free(2), WHOLE, running, NOW, 0, strand_limit=0) is quick
    assert choose([narrow], WHOLE, WHOLE, [], NOW, 0, strand_limit=0) is narrow  # empty
