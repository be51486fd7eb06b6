"""Placement in the live controller, as in the simulator (domain/placement.py): the fullest
machine asking gets the job, a draining machine gets nothing, and a wide job's reservation
lets only narrower jobs that end before it through. The test acts as the pilots."""

import threading

import pytest

from controller.store import Store
from tests.conftest import MANUAL, sh
from tests.integration.test_api import register
from tests.integration.test_matching import take

pytestmark = pytest.mark.integration


@pytest.fixture
def ctrl(make_controller):
    # pilots played over HTTP never heartbeat: not lost (which revokes them) while it runs
    return make_controller(endpoints=[{**MANUAL, "reserve_limit": 300, "lost_after": 600}])


def poll(ctrl, pilot, cores, got):
    with ctrl.client(pilot) as c:
        r = c.post(f"/api/v1/pilots/{pilot}/match", json={
            "free_cores": cores, "free_memory_mb": cores * 1024, "free_slots": 1, "wait": 2.5})
    got[pilot] = r.json()["matches"][0]["job"]["id"] if r.status_code == 200 else None


def test_the_fullest_machine_asking_gets_the_job(ctrl):
    empty = register(ctrl, machine="empty", cores=4, slots=4)
    full = register(ctrl, machine="full", cores=4, slots=4)
    got: dict[str, int | None] = {}
    threads = [threading.Thread(target=poll, args=(ctrl, p, cores, got))
               for p, cores in ((empty, 4), (full, 1))]
    for t in threads:
        t.start()
    ctrl.wait_long_polls(2)  # both are asking (for 2.5 s: less than the 3 s a matched job
    # may stay silent before it is rescheduled, so the empty machine does not get it back)
    (jid,) = ctrl.submit("alice", sh("true"))
    for t in threads:
        t.join(15)
    assert got == {full: jid, empty: None}
    assert ctrl.job(jid)["machine"] == "full"


def test_a_draining_machine_gets_nothing(ctrl):
    m = register(ctrl, machine="d1", cores=4, slots=4)
    (jid,) = ctrl.submit("alice", sh("true"))
    store = Store(ctrl.database)
    try:
        store.machines.set_draining("manual", ["d1"])
        assert take(ctrl, m, cores=4, mem=4096) is None
        store.machines.set_draining("manual", [])
    finally:
        store.close()
    assert take(ctrl, m, cores=4, mem=4096)["id"] == jid


def test_an_idle_pilot_learns_in_its_long_poll_that_its_machine_drains(ctrl):
    # an idle pilot sends no heartbeats: the long-poll it waits in tells it, well before its
    # wait ends (it looks again at least every quarter of lost_after)
    m = register(ctrl, machine="d2", cores=4, slots=4)
    got: list = []

    def wait_for_work():
        with ctrl.client(m) as c:
            got.append(c.post(f"/api/v1/pilots/{m}/match", json={
                "free_cores": 4, "free_memory_mb": 4096, "free_slots": 4, "wait": 20}))

    t = threading.Thread(target=wait_for_work)
    t.start()
    store = Store(ctrl.database)
    try:
        store.machines.set_draining("manual", ["d2"])
    finally:
        store.close()
    t.join(30)
    (r,) = got
    assert r.status_code == 200 and r.json() == {"matches": [], "drain": True}


def test_a_wide_job_holds_cores_and_short_jobs_backfill(ctrl):
    m = register(ctrl, machine="w1", cores=4, slots=4)
    (running,) = ctrl.submit("alice", sh("true", cores=3, max_runtime=120))
    assert take(ctrl, m, cores=4, mem=4096)["id"] == running  # 1 core left, for 120 s
    wide, long_one, short_one = ctrl.submit(
        "alice", {**sh("true", cores=4), "priority": 9}, sh("true", max_runtime=3600),
        sh("true", max_runtime=60))
    # the wide job comes first but needs all 4 cores: they are held for it (free in 120 s);
    # the 60 s job ends before then and backfills, the 1 h one would delay it
    assert take(ctrl, m, cores=1, mem=1024)["id"] == short_one
    assert take(ctrl, m, cores=1, mem=1024) is None
    assert ctrl.job(long_one)["state"] == "waiting" and ctrl.job(wide)["state"] == "waiting"

