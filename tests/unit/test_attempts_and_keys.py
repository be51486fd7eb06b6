"""Numbered attempts under leases, and idempotency keys, on each backend (issues 11, 15)."""

import pytest

from controller.domain.jobs import JobState, NewJob
from controller.domain.matching import SlotOffer
from controller.errors import Conflict
from controller.store import Store
from controller.store.jobs import IdempotencyKey

OFFER = SlotOffer("ep", cores=8, memory_mb=8192)


@pytest.fixture
def store(database):
    s = Store(database, lease=30.0)
    s.machines.register_pilot("p1", "ep", "m1", 8, 8192, [], 4, "test")
    s.machines.register_pilot("p2", "ep", "m2", 8, 8192, [], 4, "test")
    yield s
    s.close()


def claim(store, pilot="p1", machine="m1", now=1000.0):
    got = store.jobs.match(pilot, machine, OFFER, by="owner", shares={}, now=now).jobs
    return got[0][0] if got else None


def attempts(store, job_id):
    return [dict(r) for r in store.rows(
        "SELECT n, pilot_id, lease_expires, ended_at, outcome FROM attempts WHERE job_id = ?"
        " ORDER BY n", (job_id,))]


def test_each_match_starts_a_numbered_attempt_under_a_lease_that_heartbeats_renew(store):
    (jid,) = store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3, now=990.0)
    job = claim(store)
    assert (job.attempt, job.lease_expires) == (1, 1030.0)
    store.jobs.heartbeat("p1", {jid: None}, now=1010.0)
    assert store.jobs.get(jid).lease_expires == 1040.0  # renewed
    # silent: nothing before the lease runs out, then stalled and rescheduled
    assert store.jobs.stall(expired_before=1039.0, now=1049.0) == []
    assert store.jobs.stall(expired_before=1041.0, now=1051.0) == [(jid, JobState.WAITING)]
    job = claim(store, "p2", "m2", now=1060.0)
    assert job.attempt == 2
    store.jobs.report("p2", jid, "done", 0, None, now=1070.0)
    assert [(a["n"], a["pilot_id"], a["outcome"]) for a in attempts(store, jid)] == [
        (1, "p1", "stalled"), (2, "p2", "done")]
    assert all(a["ended_at"] for a in attempts(store, jid))


def test_a_lost_machine_gives_back_only_jobs_whose_lease_ran_out_unless_known_dead(store):
    ids = store.jobs.submit([NewJob("/bin/true")] * 2, "alice", "physics", 3, now=990.0)
    claim(store, now=1000.0)
    claim(store, now=1020.0)
    # lease of the first: 1030, of the second: 1050
    moved = store.jobs.stall(machines=["m1"], expired_before=1040.0, now=1045.0)
    assert moved == [(ids[0], JobState.WAITING)]
    moved = store.jobs.stall(machines=["m1"], now=1046.0)  # the driver killed all of m1
    assert moved == [(ids[1], JobState.WAITING)]


def test_the_same_idempotency_key_answers_the_same_ids_and_another_body_is_refused(store):
    key = IdempotencyKey("k1", "hash-a", keep=100.0)
    jobs = [NewJob("/bin/true")] * 3
    first = store.jobs.submit(jobs, "alice", "physics", 3, now=1000.0, idempotency=key)
    again = store.jobs.submit(jobs, "alice", "physics", 3, now=1001.0, idempotency=key)
    assert first == again == [1, 2, 3]
    assert store.jobs.counts() == {"waiting": 3}
    with pytest.raises(Conflict, match="another request"):
        store.jobs.submit(jobs, "alice", "physics", 3, now=1002.0,
                          idempotency=IdempotencyKey("k1", "hash-b", 100.0))
    # keys are per owner, and forgotten after `keep`
    assert store.jobs.submit(jobs, "bob", "bio", 3, now=1003.0, idempotency=key) == [4, 5, 6]
    assert store.jobs.submit(jobs, "alice", "physics", 3, now=1101.0,
                             idempotency=key) == [7, 8, 9]


def test_a_key_kept_from_before_its_ids_were_listed_still_answers_them(database):
    key = IdempotencyKey("k1", "hash-a", keep=1e9)
    s = Store(database)
    first = s.jobs.submit([NewJob("/bin/true")] * 3, "alice", "physics", 3, idempotency=key)
    with s.tx() as c:  # as a key written before migration 015 looks, its fill not yet run
        c.execute("UPDATE idempotency_keys SET ids = NULL")
        c.execute("DELETE FROM _migrations WHERE name = '020_i21_idempotency_ids_filled'")
    s.close()
    s = Store(database)
    try:
        again = s.jobs.submit([NewJob("/bin/true")] * 3, "alice", "physics", 3,
                              idempotency=key)
        assert again == first and s.jobs.counts() == {"waiting": 3}
    finally:
        s.close()


def test_one_key_sent_to_two_controller_processes_at_once_creates_the_jobs_once(store,
                                                                             database):
    """Two stores on one database stand for two controller processes; a retry of a
    submission reaches the second while the first is still committing."""
    import threading

    other = Store(database, lease=30.0)
    try:
        key = IdempotencyKey("k-race", "hash-a", keep=100.0)
        jobs = [NewJob("/bin/true")] * 50
        start = threading.Barrier(2)
        got: list[list[int]] = []

        def submit(s: Store) -> None:
            start.wait()
            got.append(s.jobs.submit(jobs, "alice", "physics", 3, now=1000.0,
                                     idempotency=key))

        threads = [threading.Thread(target=submit, args=(s,)) for s in (store, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 2 and got[0] == got[1] and len(set(got[0])) == 50
        assert store.jobs.counts() == {"waiting": 50}
    finally:
        other.close()


def test_heartbeats_output_and_reports_of_a_stale_attempt_are_refused(store):
    """The job went back to the queue and the same pilot got it again: what it says about
    the first attempt must not count for the second."""
    (jid,) = store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3, now=990.0)
    claim(store, now=1000.0)
    store.jobs.stall(expired_before=2000.0, now=1100.0)
    assert claim(store, now=1101.0).attempt == 2
    stale = store.jobs.heartbeat("p1", {jid: None}, now=1102.0, attempts={jid: 1})
    assert (stale.stop, stale.lost) == ([jid], [jid])  # kill it at once
    current = store.jobs.heartbeat("p1", {jid: None}, now=1102.0, attempts={jid: 2})
    assert (current.stop, current.lost, current.lease) == ([], [], 30.0)
    with pytest.raises(Conflict, match="attempt 1 of job 1 is over"):
        store.jobs.save_output("p1", jid, "out", "", False, attempt=1)
    with pytest.raises(Conflict, match="attempt 1 of job 1 is over"):
        store.jobs.report("p1", jid, "done", 0, None, attempt=1)
    assert store.jobs.report("p1", jid, "done", 0, None, attempt=2).state == JobState.DONE
