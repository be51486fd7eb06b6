import pytest

from controller.domain import jobs, machines
from controller.domain.jobs import JobState as S
from controller.domain.machines import MachineState as M
from controller.domain.transitions import IllegalTransition


@pytest.mark.parametrize("edge", sorted(jobs.TRANSITIONS, key=str))
def test_every_listed_job_edge_is_allowed(edge):
    assert jobs.check_transition(*edge)


@pytest.mark.parametrize("old,new", [
    (S.DONE, S.RUNNING), (S.FAILED, S.WAITING), (S.KILLED, S.WAITING), (S.WAITING, S.DONE),
    (S.WAITING, S.RUNNING), (S.RECEIVED, S.MATCHED), (S.STALLED, S.RUNNING),
])
def test_illegal_job_edges_are_refused(old, new):
    with pytest.raises(IllegalTransition, match=f"from {old.value} to {new.value}"):
        jobs.check_transition(old, new)


def test_final_states_have_no_way_out():
    for old, _new in jobs.TRANSITIONS:
        assert old not in jobs.FINAL_STATES


def test_every_state_is_reachable_from_received():
    seen, todo = {S.RECEIVED}, [S.RECEIVED]
    while todo:
        s = todo.pop()
        for old, new in jobs.TRANSITIONS:
            if old == s and new not in seen:
                seen.add(new)
                todo.append(new)
    assert seen == set(S)


def test_machine_edges():
    assert machines.check_transition(M.BOOTING, M.RUNNING)
    assert machines.check_transition(M.RUNNING, M.STOPPING)
    with pytest.raises(IllegalTransition):
        machines.check_transition(M.STOPPED, M.RUNNING)
    with pytest.raises(IllegalTransition):
        machines.check_transition(M.RUNNING, M.BOOTING)
