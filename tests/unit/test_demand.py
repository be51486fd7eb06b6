"""Waiting work against capacity (domain.demand), shared by decide() and decide_batch()."""

from controller.domain.demand import free_share, waiting_demand
from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState as M
from controller.domain.machines import MachineView
from controller.domain.matching import SlotOffer
from controller.domain.taskqueues import TaskQueue

SHAPE = SlotOffer("ep", 4, 8000, frozenset({"linux"}), 3600)


def tq(waiting, tq_id=1, **req):
    return TaskQueue(tq_id, Requirements(**req), "alice", "g", 0, waiting)


def machine(state=M.RUNNING, slots=2, busy=0):
    return MachineView("ep-0001", "ep", state, 0.0, slots, busy)


def test_queues_that_fit_count_in_machines_worth():
    d = waiting_demand([tq(4), tq(3, 2, cores=4), tq(0, 3, cores=2)], SHAPE, 2, [])
    assert d.machines == 4 / 2 + 3 / 1  # 2 one-core jobs a machine; one four-core job
    assert d.supply == 0.0 and d.unfit == ()
    assert d.uncovered == 5
    assert waiting_demand([tq(3)], SHAPE, 2, []).uncovered == 2  # 1.5 machines: two


def test_a_queue_that_fits_no_machine_adds_no_demand_and_says_why():
    d = waiting_demand([tq(5, 7, cores=8), tq(2, 8, max_runtime=7200), tq(2, 9)], SHAPE, 2, [])
    assert d.machines == 1.0
    assert d.unfit == ("task queue 7 (5 waiting) cannot run here: needs 8 cores, ep offers 4",
                       "task queue 8 (2 waiting) cannot run here: needs 7200s of run time, "
                       "ep allows 3600s")


def test_supply_from_free_slots_of_running_machines_and_whole_starting_ones():
    live = [machine(busy=1), machine(busy=2), machine(M.BOOTING, busy=0),
            machine(M.REQUESTED)]
    d = waiting_demand([tq(7)], SHAPE, 2, live)
    assert d.supply == 0.5 + 0.0 + 1.0 + 1.0
    assert d.machines == 3.5
    assert d.uncovered == 1
    assert waiting_demand([tq(5)], SHAPE, 2, live).uncovered == 0  # 2.5 covered exactly


def test_free_share_of_one_machine():
    assert free_share(M.RUNNING, 4, 1) == 0.75
    assert free_share(M.RUNNING, 2, 3) == 0.0  # never below nothing
    assert free_share(M.BOOTING, 4, 0) == 1.0
    assert free_share(None, 0, 0) == 1.0  # a host with no machine yet


def test_a_shape_that_holds_no_job_counts_one_job_a_machine():
    assert waiting_demand([tq(3)], SHAPE, 0, []).machines == 3.0  # 0 slots: settings forbid it
