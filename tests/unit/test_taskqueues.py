import random

from controller.domain.jobs import Requirements, task_queue_key
from controller.domain.taskqueues import (
    GROUP,
    OWNER,
    FairShare,
    TaskQueue,
    UsageLedger,
    by_owner,
    decay,
    fair_share_order,
    fair_share_walk,
    standings,
)

R = Requirements()
HOUR = 3600.0


def test_task_queue_key_groups_identical_requirements():
    a = task_queue_key(Requirements(tags=frozenset({"a", "b"})), "alice", "g")
    b = task_queue_key(Requirements(tags=frozenset({"b", "a"})), "alice", "g")
    assert a == b
    assert a != task_queue_key(Requirements(tags=frozenset({"a"})), "alice", "g")
    assert a != task_queue_key(Requirements(tags=frozenset({"a", "b"})), "bob", "g")


def test_platforms_join_the_key_only_when_given():
    plain = Requirements()
    assert "platforms" not in plain.to_dict()  # older task queues keep their keys
    el = Requirements(platforms=frozenset({"el9", "el8"}))
    assert el.to_dict()["platforms"] == ["el8", "el9"]
    assert Requirements.from_dict(el.to_dict()) == el
    assert task_queue_key(el, "a", "g") != task_queue_key(plain, "a", "g")


def test_owner_below_share_goes_first_then_priority():
    qs = [TaskQueue(1, R, "alice", "g", 10), TaskQueue(2, R, "bob", "g", 0),
          TaskQueue(3, R, "alice", "g", 50)]
    fs = FairShare(held={("owner", "alice"): 3, ("owner", "bob"): 1})
    assert [q.id for q in fair_share_order(qs, fs)] == [2, 3, 1]
    # with no usage, alice's higher priority queue leads; priority orders within an owner
    assert [q.id for q in fair_share_order(qs, FairShare())] == [3, 1, 2]


def test_shares_weight_usage():
    qs = [TaskQueue(1, R, "alice", "g", 0), TaskQueue(2, R, "bob", "g", 0)]
    # alice holds 3 cores with share 4 (0.75); bob holds 1 with share 1 (1.0)
    fs = FairShare(shares={"alice": 4.0}, held={("owner", "alice"): 3, ("owner", "bob"): 1})
    assert [q.id for q in fair_share_order(qs, fs)] == [1, 2]


def test_past_usage_counts_until_it_decays():
    """Nobody holds anything now, but alice used the machine recently: bob goes first.
    Usage decays with the half-life, so old usage weighs less than what is held now."""
    ledger = UsageLedger(half_life=HOUR)
    ledger.charge("owner", "alice", 3600.0, now=0.0)  # one core-hour
    qs = [TaskQueue(1, R, "alice", "g", 0), TaskQueue(2, R, "bob", "g", 0)]
    fs = FairShare(half_life=HOUR, usage=ledger.at(0.0))
    assert [q.id for q in fair_share_order(qs, fs)] == [2, 1]
    assert ledger.at(HOUR)[("owner", "alice")] == 1800.0
    assert ledger.at(2 * HOUR)[("owner", "alice")] == 900.0
    # two half-lives later it counts as a quarter of a core: less than bob's one core now
    fs = FairShare(half_life=HOUR, usage=ledger.at(2 * HOUR), held={("owner", "bob"): 1})
    assert fs.load("owner", "alice") == 0.25
    assert [q.id for q in fair_share_order(qs, fs)] == [1, 2]
    # charging decays what was there first
    ledger.charge("owner", "alice", 100.0, now=HOUR)
    assert ledger.at(HOUR)[("owner", "alice")] == 1900.0
    assert decay(8.0, 0.0, 3 * HOUR, HOUR) == 1.0


def test_two_level_group_fair_share():
    """Groups by their share first, then owners within a group by theirs (not the oldest
    queue): carol, in alice's group, is served before alice once alice has used more."""
    qs = [TaskQueue(1, R, "alice", "physics", 0), TaskQueue(2, R, "carol", "physics", 0),
          TaskQueue(3, R, "bob", "bio", 0)]
    held = {("owner", "alice"): 4, ("group", "physics"): 4, ("owner", "bob"): 2,
            ("group", "bio"): 2}
    fs = FairShare(by="group", held=held)
    # bio holds less than physics: bob first; inside physics carol (0) before alice (4)
    assert [q.id for q in fair_share_order(qs, fs)] == [3, 2, 1]
    # physics with 3 times bio's share: physics (4/3) before bio (2/1)
    fs = FairShare(by="group", held=held, group_shares={"physics": 3.0})
    assert [q.id for q in fair_share_order(qs, fs)] == [2, 1, 3]
    # a group's share is its own, not the sum of its users': a big user share in bio
    # does not lift bio above physics
    fs = FairShare(by="group", held=held, shares={"bob": 100.0}, group_shares={"physics": 3})
    assert fair_share_order(qs, fs)[0].id == 2


def test_standings_rank_groups_then_owners_within_them():
    held = {("owner", "alice"): 4, ("group", "physics"): 4, ("owner", "bob"): 2,
            ("group", "bio"): 2}
    fs = FairShare(by="group", half_life=HOUR, held=held, group_shares={"physics": 3.0},
                   usage={("owner", "carol"): 1800.0, ("group", "physics"): 1800.0})
    rows = {(s.kind, s.name): s for s in standings(
        fs, {"alice": "physics", "carol": "physics", "bob": "bio"})}
    assert rows[("group", "physics")].rank == 1 and rows[("group", "bio")].rank == 2
    assert rows[("group", "physics")].load == (0.5 + 4) / 3
    assert rows[("owner", "carol")].rank == 1 and rows[("owner", "alice")].rank == 2
    assert rows[("owner", "bob")].rank == 1  # alone in bio
    assert rows[("owner", "carol")].usage == 1800.0 and rows[("owner", "carol")].load == 0.5


def test_the_lazy_fair_share_walk_is_the_full_sort():
    """fair_share_walk (owners sorted, their queues merged lazily) gives the order of sorting
    every queue by FairShare.key, ties between owners of equal load included."""
    rng = random.Random(7)
    owners = [("a", "g1"), ("b", "g1"), ("c", "g2"), ("d", "g2"), ("e", "g3")]
    for by in (OWNER, GROUP):
        queues = [TaskQueue(i, Requirements(cores=rng.randint(1, 4)), *rng.choice(owners),
                            rng.randint(-2, 2)) for i in range(300)]
        usage = {(OWNER, "a"): 100.0, (OWNER, "b"): 100.0, (GROUP, "g1"): 200.0}
        fs = FairShare(by, 100.0, {"c": 2.0}, {}, usage, {(OWNER, "d"): 1.0})
        assert list(fair_share_walk(by_owner(queues), fs)) == sorted(queues, key=fs.key)


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def fetchall(self):
        return self.rows


class _ReadWhileWorkArrives:
    """A connection for TaskQueues.live: the first read of the live queues sees the queue
    before a submission commits, and the submission's `changed()` lands while it reads."""

    def __init__(self, queues):
        self.queues, self.reads = queues, 0

    def execute(self, sql, params=()):
        if sql.startswith("WITH RECURSIVE live"):
            self.reads += 1
            if self.reads == 1:
                self.queues.changed()  # work arrives (and commits) during this read
            return _Rows([])
        return _Rows([])


def test_a_snapshot_read_while_work_arrives_is_not_kept():
    """Issue 19: a snapshot whose read began before a submission committed is answered to its
    reader but not kept, so the pilots the submission wakes read the queues again (before: it
    was kept for LIVE_TTL, and a woken pilot found nothing and slept to its next look)."""
    from controller.store.taskqueues import TaskQueues

    queues = TaskQueues(clock=lambda: 100.0)  # time stands still: only a change re-reads
    c = _ReadWhileWorkArrives(queues)
    queues.live(c)
    queues.live(c)
    assert c.reads == 2
    queues.live(c)
    assert c.reads == 2  # no change since the second read: it is kept
