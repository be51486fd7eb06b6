from controller.domain.jobs import Requirements, task_queue_key
from controller.domain.taskqueues import TaskQueue, fair_share_order

R = Requirements()


def test_task_queue_key_groups_identical_requirements():
    a = task_queue_key(Requirements(tags=frozenset({"a", "b"})), "alice", "g")
    b = task_queue_key(Requirements(tags=frozenset({"b", "a"})), "alice", "g")
    assert a == b
    assert a != task_queue_key(Requirements(tags=frozenset({"a"})), "alice", "g")
    assert a != task_queue_key(Requirements(tags=frozenset({"a", "b"})), "bob", "g")


def test_owner_below_share_goes_first_then_priority():
    qs = [TaskQueue(1, R, "alice", "g", 10), TaskQueue(2, R, "bob", "g", 0),
          TaskQueue(3, R, "alice", "g", 50)]
    order = fair_share_order(qs, usage={"alice": 3, "bob": 1}, shares={})
    assert [q.id for q in order] == [2, 3, 1]
    # with no usage, alice's higher priority queue leads; priority orders within an owner
    order = fair_share_order(qs, usage={}, shares={})
    assert [q.id for q in order] == [3, 1, 2]


def test_shares_weight_usage():
    qs = [TaskQueue(1, R, "alice", "g", 0), TaskQueue(2, R, "bob", "g", 0)]
    # alice holds 3 slots with share 4 (0.75); bob holds 1 with share 1 (1.0)
    order = fair_share_order(qs, usage={"alice": 3, "bob": 1}, shares={"alice": 4.0})
    assert [q.id for q in order] == [1, 2]


def test_fair_share_by_group():
    qs = [TaskQueue(1, R, "alice", "physics", 0), TaskQueue(2, R, "bob", "bio", 0)]
    order = fair_share_order(qs, usage={"physics": 5, "bio": 0}, shares={}, by="group")
    assert [q.id for q in order] == [2, 1]
