"""The queue on each backend: a real SQLite file, and a real PostgreSQL database."""

import sqlite3
import threading

import pytest

from controller.auth import Role
from controller.domain.jobs import JobState, NewJob, Requirements
from controller.domain.matching import SlotOffer
from controller.domain.placement import Asking
from controller.domain.runtime_prediction import Predicted
from controller.errors import Conflict, NotFound, StorageError, Unauthorized
from controller.store import Store

OFFER = SlotOffer("ep", cores=64, memory_mb=64_000, tags=frozenset({"linux"}))


@pytest.fixture
def store(database):
    s = Store(database)
    s.tokens.create_user("alice", "physics")
    s.tokens.create_user("bob", "bio")
    yield s
    s.close()


def match(store, pilot="p1", machine="m1", offer=OFFER):
    """Match one job for a pilot registered with the offer's resources (the matcher offers a
    pilot no more than it registered)."""
    try:
        store.machines.pilot(pilot)
    except NotFound:
        store.machines.register_pilot(pilot, offer.endpoint, machine, offer.cores,
                                      offer.memory_mb, sorted(offer.tags), 64, "test")

    got = store.jobs.match(pilot, machine, offer, by="owner", shares={}, token_margin=60).jobs
    return got[0] if got else None


def test_submit_records_received_and_waiting(store):
    ids = store.jobs.submit([NewJob("/bin/true"), NewJob("/bin/false")], "alice", "physics", 3)
    assert ids == [1, 2]
    assert store.jobs.get(1).state == JobState.WAITING
    ev = store.jobs.events(1)
    assert [(e["from_state"], e["to_state"]) for e in ev] == [(None, "received"),
                                                              ("received", "waiting")]
    qs = store.jobs.queue_snapshot()
    assert [(q.owner, q.waiting) for q in qs] == [("alice", 2)]  # one task queue


def test_wal_mode(store):
    if store.dialect.name != "sqlite":
        pytest.skip("WAL is SQLite's journal mode")
    assert store.rows("PRAGMA journal_mode")[0][0] == "wal"


def test_commits_do_not_checkpoint_a_thread_of_its_own_does(store):
    # a request's COMMIT only appends to the WAL; the pages reach the database file through
    # the backend's checkpoint thread (controller/store/sqlite.py), never inside a commit
    if store.dialect.name != "sqlite":
        pytest.skip("WAL is SQLite's journal mode")
    import time
    writer = store.backend.db.conn
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    path = store.backend.path
    before = path.stat().st_size
    store.jobs.submit([NewJob("/bin/true", arguments=["x" * 2000])] * 2000, "alice",
                      "physics", 3)
    deadline = time.monotonic() + 30  # a bound, not a timing: the thread runs every second
    while path.stat().st_size < before + 4_000_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.stat().st_size >= before + 4_000_000, "no checkpoint copied the jobs' pages"


def test_a_failed_bulk_submit_leaves_nothing(store):
    jobs = [NewJob("/bin/true"), NewJob("/bin/true", requirements=Requirements(cores=2))]
    with pytest.raises((sqlite3.ProgrammingError, StorageError)):
        store.jobs.submit([*jobs, NewJob(object())], "alice", "physics", 3)  # type: ignore[arg-type]
    assert store.jobs.counts() == {}
    assert store.jobs.queue_snapshot() == []
    assert store.jobs.submit(jobs, "alice", "physics", 3) == [1, 2]


def test_concurrent_matching_hands_each_job_out_once(store):
    store.jobs.submit([NewJob("/bin/true")] * 40, "alice", "physics", 3)
    got: list[int] = []
    lock = threading.Lock()

    def pilot(n):
        while (r := match(store, f"p{n}", f"m{n}")) is not None:
            with lock:
                got.append(r[0].id)

    threads = [threading.Thread(target=pilot, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 41))


def test_match_gives_a_job_token_scoped_to_the_job(store):
    store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3)
    job, token = match(store)
    p = store.tokens.verify(token)
    assert (p.role, p.owner, p.job_id) == (Role.JOB, "alice", job.id)
    store.jobs.report("p1", job.id, "done", 0, None)
    with pytest.raises(Exception, match="unknown token"):
        store.tokens.verify(token)  # revoked when the job ended


def test_stalled_jobs_are_rescheduled_then_failed(store):
    store.jobs.submit([NewJob("/bin/true", max_retries=1)], "alice", "physics", 3)
    job, _ = match(store)
    moved = store.jobs.stall(expired_before=job.lease_expires + 1)
    assert moved == [(job.id, JobState.WAITING)]
    assert store.jobs.get(job.id).retries == 1
    job, _ = match(store, pilot="p2")
    moved = store.jobs.stall(expired_before=job.lease_expires + 1)
    assert moved == [(job.id, JobState.FAILED)]
    states = [e["to_state"] for e in store.jobs.events(job.id)]
    assert states == ["received", "waiting", "matched", "stalled", "rescheduled", "waiting",
                      "matched", "stalled", "failed"]


def test_interrupted_jobs_are_rescheduled_without_using_a_retry(store):
    store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3)
    job, _ = match(store)
    j = store.jobs.report("p1", job.id, "interrupted", None, "SIGTERM")
    assert (j.state, j.retries, j.reschedules, j.pilot_id) == (JobState.WAITING, 0, 1, None)


def test_only_the_holding_pilot_may_report(store):
    store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3)
    job, _ = match(store)
    with pytest.raises(Conflict, match="not held by this pilot"):
        store.jobs.report("intruder", job.id, "done", 0, None)
    assert store.jobs.get(job.id).state == JobState.MATCHED


def test_kill_keeps_killed_even_if_the_pilot_reports_later(store):
    store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3)
    job, _ = match(store)
    assert store.jobs.kill(job.id, "alice").state == JobState.KILLED
    assert store.jobs.heartbeat("p1", {job.id: None}).stop == [job.id]
    j = store.jobs.report("p1", job.id, "failed", -15, "killed")
    assert (j.state, j.exit_code) == (JobState.KILLED, -15)
    with pytest.raises(Conflict, match="already killed"):
        store.jobs.kill(job.id, "alice")


def test_held_counts_follow_every_state_change(store):
    store.jobs.submit([NewJob("/bin/true", max_retries=0)] * 5, "alice", "physics", 0)
    store.jobs.submit([NewJob("/bin/true")] * 3, "bob", "bio", 3)
    taken = [match(store, f"p{i}", f"m{i}")[0] for i in range(6)]
    store.jobs.report(taken[0].pilot_id, taken[0].id, "done", 0, None)
    store.jobs.kill(taken[1].id, "admin")
    store.jobs.report(taken[2].pilot_id, taken[2].id, "interrupted", None, None)
    store.jobs.stall(machines=[taken[3].machine])

    def actual(col):
        return dict(store.rows(
            f"SELECT {col}, COUNT(*) FROM jobs WHERE state IN ('matched', 'running')"
            f" GROUP BY {col}"))

    def held(kind):
        return {k: n for k, n in store.rows(
            "SELECT name, n FROM held WHERE kind = ?", (kind,)) if n}

    assert held("owner") == actual("owner") and sum(held("owner").values()) == 2
    assert held("group") == actual("grp")


def test_one_request_claims_a_job_per_slot_within_the_offer(store):
    store.jobs.submit([NewJob("/bin/true", requirements=Requirements(cores=2))] * 5,
                      "alice", "physics", 3)

    offer = SlotOffer("ep", cores=5, memory_mb=64_000)
    store.machines.register_pilot("p1", "ep", "m1", 8, 64_000, [], 8, "test")
    got = store.jobs.match("p1", "m1", offer, by="owner", shares={}, count=4).jobs
    assert [j.id for j, _ in got] == [1, 2]  # 5 cores hold two 2-core jobs


def test_a_pilot_is_offered_no_more_than_it_registered_minus_what_it_holds(store):
    """The request claims 64 free cores and 8 slots; the pilot registered 8 cores and 3 slots
    and holds one 4-core job: it gets one more 4-core job, not eight."""
    store.jobs.submit([NewJob("/bin/true", requirements=Requirements(cores=4))] * 10,
                      "alice", "physics", 3)
    store.machines.register_pilot("p1", "ep", "m1", 8, 64_000, [], 3, "test")

    def claim(count):
        return store.jobs.match("p1", "m1", OFFER, by="owner", shares={}, count=count).jobs

    assert len(claim(1)) == 1
    assert len(claim(8)) == 1  # 8 - 4 cores left: one more
    assert claim(8) == []  # full
    held = store.jobs.find(state="matched")
    store.jobs.report("p1", held[0].id, "done", 0, None)
    assert len(claim(8)) == 1  # one finished: room for one again


def test_sqlite_utils_is_pinned_to_the_first_version_with_the_api_the_store_uses():
    """The store calls Database.atomic() (migrations), first released in sqlite-utils 4.0;
    every other call it makes (Database(conn), enable_wal, table().create(pk, not_null),
    create_index(unique), add_column(not_null_default), table_names, rows, insert) is
    older. Checked against the 3.39 and 4.0 wheels."""
    import re
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    (low,) = re.findall(r'"sqlite-utils>=([0-9.]+)"', pyproject)
    assert tuple(int(x) for x in low.split(".")) == (4, 0)
    source = (Path(__file__).resolve().parents[2] / "controller/store/migrations.py")
    assert "db.atomic()" in source.read_text()


def test_claims_of_many_owners_from_two_processes_never_deadlock(store, database):
    """Two stores on one database stand for two controller processes, each claiming 8 jobs of
    three owners a request: the fair-share counts are never locked in two orders."""
    for user, group in (("carol", "physics"),):
        store.tokens.create_user(user, group)
    for owner, group in (("alice", "physics"), ("bob", "bio"), ("carol", "physics")):
        store.jobs.submit([NewJob("/bin/true")] * 200, owner, group, 3)
    other = Store(database)
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claim(s: Store, pilot: str) -> None:
        s.machines.register_pilot(pilot, "ep", pilot, 1024, 10**7, [], 1024, "test")
        try:
            while True:
                jobs = s.jobs.match(pilot, pilot, OFFER, by="owner", shares={},
                                    count=8).jobs
                if not jobs:
                    return
                with lock:
                    got.extend(j.id for j, _ in jobs)
        except BaseException as e:  # a deadlock retried three times, and still one
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(s, f"p{i}"))
               for i, s in enumerate([store, other, store, other])]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(got) == list(range(1, 601))
        if store.dialect.name == "postgres":
            (deadlocks,) = store.rows("SELECT deadlocks FROM pg_stat_database"
                                      " WHERE datname = current_database()")
            assert deadlocks[0] == 0
    finally:
        other.close()


def test_work_a_fuller_machine_asking_should_have_is_left_to_it_only_when_asked(store):
    """`fuller` names the machines asking at this moment: a job one of them should have
    (domain/placement.leave_to_fuller: it is fuller) is left to it and the claim says so; a
    match that cannot wait (`fuller=None`) takes the job at once."""
    (jid,) = store.jobs.submit([NewJob("/bin/true")], "alice", "physics", 3)
    store.machines.register_pilot("p1", "ep", "empty", 64, 64_000, ["linux"], 64, "test")
    full = Asking("full", SlotOffer("ep", cores=2, memory_mb=2_000, tags=frozenset({"linux"})))
    left = store.jobs.match("p1", "empty", OFFER, by="owner", shares={}, fuller=[full])
    assert left.jobs == [] and [r.cores for r in left.deferred] == [1]  # what it left
    assert store.jobs.get(jid).state == JobState.WAITING
    now = store.jobs.match("p1", "empty", OFFER, by="owner", shares={}, fuller=None)
    assert [j.id for j, _ in now.jobs] == [jid] and not now.deferred




def test_a_machine_stopped_or_lost_loses_its_pilots_credentials_at_once(store):
    """Issue 26: the move that records a machine stopped, lost or failed revokes, in its own
    transaction, every pilot token bound to it; a draining one keeps its own."""
    from controller.domain.machines import MachineState as M
    creds = {}
    for m in ("gone", "stopped", "draining"):
        store.machines.register_pilot(f"p-{m}", "ep", m, 2, 2048, [], 1, "test")
        creds[m] = store.tokens.issue(Role.PILOT, endpoint="ep", machine=m, pilot_id=f"p-{m}",
                                      lifetime=3600)
    spare = store.tokens.issue(Role.PILOT, endpoint="ep", machine="gone")  # a bootstrap
    store.machines.move("gone", M.LOST, "silent")
    store.machines.move("stopped", M.STOPPED, "its pilot exited")
    store.machines.move("draining", M.STOPPING, "idle")
    for t in (creds["gone"], spare, creds["stopped"]):
        with pytest.raises(Unauthorized, match="unknown token"):
            store.tokens.verify(t)
    assert store.tokens.verify(creds["draining"]).pilot_id == "p-draining"


def test_a_pilot_credential_expires_with_the_reason_and_renews_once_per_quarter(store):
    from controller.domain.credentials import pilot_credential_lifetime, renewal_due
    assert pilot_credential_lifetime(3600) == 7200
    # renewed only once a quarter of its life has passed: not at every heartbeat
    assert not renewal_due(1000 + 7200, 7200, now=1000 + 1799)
    assert renewal_due(1000 + 7200, 7200, now=1000 + 1801)
    assert not renewal_due(None, 7200, now=10**9)
    cred = store.tokens.issue(Role.PILOT, endpoint="ep", machine="m", pilot_id="p", lifetime=60)
    p = store.tokens.verify(cred)
    assert p.expires_at is not None
    with pytest.raises(Unauthorized, match="credential expired 1s ago: no heartbeat renewed"):
        store.tokens.verify(cred, now=p.expires_at + 1)
    store.tokens.renew(p.token_id, p.expires_at + 100)
    assert store.tokens.verify(cred, now=p.expires_at + 1).expires_at == p.expires_at + 100


def test_the_job_shape_columns_are_filled_from_the_requirements(tmp_path, monkeypatch):
    """Migration 023 (issue 19): jobs stored before it get their cores, memory and max run time
    from the requirements' JSON (Requirements' defaults where absent), and fair share's held
    cores are counted from the columns from then on."""
    from sqlite_utils import Database

    from controller.store import migrations

    path = tmp_path / "old.db"
    before = [m for m in migrations.MIGRATIONS if m.name != "023_i19_job_shape"]
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", before)
        old = Database(path)
        migrations.migrate(old)
        for i, req in enumerate(('{"cores": 4, "memory_mb": 2048}', '{"max_runtime": 60}')):
            old.execute(
                "INSERT INTO jobs (id, owner, grp, tq_id, state, priority, executable, arguments,"
                " env, inputs, requirements, max_retries, retries, reschedules, created_at,"
                " updated_at) VALUES (?, 'alice', 'physics', 1, 'waiting', 0, '/bin/true', '[]',"
                " '{}', '[]', ?, 0, 0, 0, 1.0, 1.0)", (i + 1, req))
        old.conn.commit()
        old.close()
    s = Store(path)
    try:
        assert [tuple(r) for r in s.rows(
            "SELECT id, cores, memory_mb, max_runtime FROM jobs ORDER BY id")] == [
            (1, 4, 2048, 3600), (2, 1, 512, 60)]
        with s.tx() as c:
            c.execute("UPDATE jobs SET state = 'running' WHERE id = 1")
        assert [tuple(r) for r in s.rows(
            "SELECT cores FROM held WHERE kind = 'owner' AND name = 'alice'")] == [(4,)]
    finally:
        s.close()


def test_the_matcher_reserves_and_backfills_by_the_loops_predicted_run_times(store):
    """The reconcile loop hands the matcher each task queue's predicted run time
    (`store.jobs.predicted`): a machine's running job that asked for 1 h but should end in
    100 s makes a wide job's reservation worth holding, and only a job predicted to end
    before that backfills; with no prediction the request counts, no cores are held."""
    four = SlotOffer("ep", cores=4, memory_mb=4096)
    store.machines.register_pilot("p1", "ep", "m1", 4, 4096, [], 4, "test")

    def claim(offer: SlotOffer) -> list[int]:
        got = store.jobs.match("p1", "m1", offer, by="owner", shares={}, whole=four,
                               reserve_limit=300).jobs
        return [j.id for j, _ in got]

    def tq(job_id: int) -> int:
        with store.read() as c:
            return int(c.execute("SELECT tq_id FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])

    (running,) = store.jobs.submit([NewJob("/bin/true", requirements=Requirements(
        cores=3, memory_mb=3072, max_runtime=3600))], "alice", "physics", 3)
    assert claim(four) == [running]
    wide, long_one, short_one = store.jobs.submit([
        NewJob("/bin/true", priority=9, requirements=Requirements(cores=4, memory_mb=4096)),
        NewJob("/bin/true", requirements=Requirements(max_runtime=3600)),
        NewJob("/bin/true", requirements=Requirements(memory_mb=256, max_runtime=3600))],
        "alice", "physics", 3)
    one = SlotOffer("ep", cores=1, memory_mb=1024)
    store.jobs.predicted = Predicted({tq(running): 100.0})  # the wide job fits in 100 s
    assert claim(one) == []  # both 1-core jobs may run 1 h: they would delay it
    store.jobs.predicted = Predicted({tq(running): 100.0, tq(short_one): 50.0})
    assert claim(one) == [short_one]  # ends before the running job: it backfills
    store.jobs.report("p1", short_one, "done", 0, None)
    store.jobs.predicted = Predicted()  # nothing known: the running job may run its hour
    assert claim(one) == [long_one]  # too far off to hold cores for the wide job
    assert store.jobs.get(wide).state == JobState.WAITING
