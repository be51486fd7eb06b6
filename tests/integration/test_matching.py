"""Matching rules against a real controller, with the test acting as a pilot over HTTP."""

import threading
import time

import pytest

from controller.store import Store
from tests.conftest import MANUAL, sh, wait_until
from tests.integration.test_api import register as api_register

pytestmark = pytest.mark.integration
# pilots played over HTTP never heartbeat: their machines must not be called lost (which
# revokes their credentials, issue 26) while a test runs
QUIET = {**MANUAL, "lost_after": 600}
OTHER = {**QUIET, "name": "other", "tags": ["linux"]}


@pytest.fixture
def ctrl(make_controller):
    return make_controller(endpoints=[QUIET, OTHER])


def register(ctrl, **kw):
    """A roomy pilot: these tests hold every job they take, and the matcher offers a pilot no
    more than it registered minus what it holds."""
    return api_register(ctrl, **{"cores": 16, "memory_mb": 16384, "slots": 8, **kw})


def take(ctrl, pilot_id, cores=8, mem=8192, slots=1):
    with ctrl.client(pilot_id) as c:
        r = c.post(f"/api/v1/pilots/{pilot_id}/match",
                   json={"free_cores": cores, "free_memory_mb": mem, "free_slots": slots})
    assert r.status_code in (200, 204), r.text
    if r.status_code == 204 or r.json()["drain"]:
        return None
    (m,) = r.json()["matches"]
    return m["job"]


def test_cores_memory_and_tags(ctrl):
    big, mem, gpu, small = ctrl.submit("alice", sh("true", cores=4),
                                       sh("true", memory_mb=6000), sh("true", tags=["gpu"]),
                                       sh("true"))
    plain = register(ctrl, machine="plain", tags=["linux"])
    # 2 free cores, 4 GB, no gpu tag: only the small job fits
    assert take(ctrl, plain, cores=2, mem=4096)["id"] == small
    assert take(ctrl, plain, cores=2, mem=4096) is None
    gpu_pilot = register(ctrl, machine="gpu", tags=["linux", "gpu"])
    assert take(ctrl, gpu_pilot, cores=1, mem=1024)["id"] == gpu
    assert take(ctrl, plain, cores=4, mem=4096)["id"] == big
    assert take(ctrl, plain, cores=1, mem=8192)["id"] == mem


def test_allowed_and_banned_endpoints(ctrl):
    only_other, not_other = ctrl.submit("alice", sh("true", endpoints=["other"]),
                                        sh("true", banned_endpoints=["other"]))
    m = register(ctrl, machine="m")
    o = register(ctrl, pilot="pilot:other", machine="o")
    assert take(ctrl, m)["id"] == not_other
    assert take(ctrl, m) is None
    assert take(ctrl, o)["id"] == only_other


def test_priority_orders_an_owners_jobs(ctrl):
    low, high, mid = ctrl.submit("alice", {**sh("true"), "priority": 0},
                                 {**sh("true"), "priority": 9}, {**sh("true"), "priority": 5})
    m = register(ctrl, machine="m")
    assert [take(ctrl, m)["id"] for _ in range(3)] == [high, mid, low]


def test_fair_share_across_owners(ctrl):
    # alice floods the queue with high priority work; bob submits two jobs later
    ctrl.submit("alice", *[{**sh("true"), "priority": 100}] * 10)
    ctrl.submit("bob", sh("true"), sh("true"))
    m = register(ctrl, machine="m")
    owners = [take(ctrl, m)["owner"] for _ in range(4)]
    assert owners == ["alice", "bob", "alice", "bob"]


def test_long_poll_hands_out_a_job_submitted_during_the_wait(ctrl):
    import threading
    import time

    m = register(ctrl, machine="m")
    got = {}

    def poll():
        t0 = time.monotonic()
        with ctrl.client(m) as c:
            r = c.post(f"/api/v1/pilots/{m}/match", json={
                "free_cores": 1, "free_memory_mb": 1024, "free_slots": 1, "wait": 20})
        got["status"], got["elapsed"] = r.status_code, time.monotonic() - t0
        got["job"] = r.json()["matches"][0]["job"]["id"] if r.status_code == 200 else None

    t = threading.Thread(target=poll)
    t.start()
    ctrl.wait_long_polls(1)
    (jid,) = ctrl.submit("alice", sh("true"))
    t.join(25)
    assert got["status"] == 200 and got["job"] == jid
    assert got["elapsed"] < 15  # woke on the submission, not at the end of the wait
    ev = ctrl.events(jid)
    submitted = next(e["at"] for e in ev if e["to_state"] == "waiting")
    matched = next(e["at"] for e in ev if e["to_state"] == "matched")
    assert matched - submitted < 1.0


def test_platforms_required_tags_and_waiting_reasons(make_controller):
    """An el9 GPU endpoint takes only jobs that ask for a GPU and list el9 (or no
    platform); a job that fits the endpoint's shape but no registered machine says why."""
    gpu = {**QUIET, "name": "gpu", "platform": "el9", "required_tags": ["gpu"]}
    ctrl = make_controller(endpoints=[gpu])
    el8, plain, anyof, wide = ctrl.submit(
        "alice", sh("true", tags=["gpu"], platforms=["el8"]), sh("true"),
        sh("true", tags=["gpu"], platforms=["el8", "el9"]), sh("true", tags=["gpu"], cores=4))
    assert "needs a platform among ['el8'], gpu is el9" in ctrl.job(el8)["waiting_reason"]
    assert "takes only jobs that ask for tags ['gpu']" in ctrl.job(plain)["waiting_reason"]
    assert ctrl.job(anyof)["waiting_reason"] is None
    assert ctrl.job(wide)["waiting_reason"] is None  # no machine yet: one may be started
    m = register(ctrl, pilot="pilot:gpu", machine="g1", cores=2, tags=["linux", "gpu"])
    # the 4-core job fits the endpoint's 8-core shape, not the 2-core machine that exists
    assert ctrl.job(wide)["waiting_reason"] == (
        "none of the 1 registered machines can run it (g1: needs 4 cores, gpu offers 2); "
        "it waits for a new machine of endpoint gpu")
    with ctrl.client("alice") as c:
        tqs = {q["id"]: q for q in c.get("/api/v1/taskqueues").json()}
    assert sum("registered machines" in (q["unmatchable"] or "") for q in tqs.values()) == 1
    assert take(ctrl, m, cores=2)["id"] == anyof
    # the matcher offers no more than the machine registered: the 4-core job waits for a
    # bigger machine
    assert take(ctrl, m, cores=8) is None
    big = register(ctrl, pilot="pilot:gpu", machine="g2", cores=8, tags=["linux", "gpu"])
    assert take(ctrl, big, cores=8)["id"] == wide
    assert take(ctrl, big, cores=8) is None  # el8 and plain stay waiting
    # bad input is refused with a message
    with ctrl.client("alice") as c:
        r = c.post("/api/v1/jobs", json={**sh("true"), "requirements": {"platforms": "el9"}})
    assert r.status_code == 422


def test_a_gpu_job_wakes_the_waiting_gpu_pilot_not_the_plain_ones(ctrl):
    """20 plain pilots and then one GPU pilot long-poll; a GPU job submitted then reaches the
    GPU pilot when it is submitted (woken: the submission wakes the pilots that fit it), not
    at the GPU pilot's own re-check 5 s after it began to wait; no plain pilot gets it."""
    plain = [register(ctrl, machine=f"plain{i}", tags=["linux"]) for i in range(20)]
    gpu = register(ctrl, machine="gpu", tags=["linux", "gpu"])
    got: dict[str, tuple[int | None, float]] = {}

    def poll(pilot: str, wait: float) -> None:
        with ctrl.client(pilot) as c:
            r = c.post(f"/api/v1/pilots/{pilot}/match", timeout=60, json={
                "free_cores": 8, "free_memory_mb": 8192, "free_slots": 1, "wait": wait})
        assert r.status_code in (200, 204), r.text
        got[pilot] = (r.json()["matches"][0]["job"]["id"] if r.status_code == 200 else None,
                      time.monotonic())

    store = Store(ctrl.database)

    def asked(pilots: list[str], since: float) -> bool:  # each made its first attempt
        marks = ",".join("?" * len(pilots))
        rows = store.rows(f"SELECT COUNT(*) FROM pilots WHERE id IN ({marks})"
                          " AND last_seen >= ?", (*pilots, since))
        return bool(rows[0][0] == len(pilots))

    try:
        since = time.time()
        threads = [threading.Thread(target=poll, args=(p, 8.0)) for p in plain]
        for t in threads:
            t.start()
        wait_until(lambda: asked(plain, since), 30, what="the plain pilots waiting")
        began = time.monotonic()
        threads.append(threading.Thread(target=poll, args=(gpu, 30.0)))
        threads[-1].start()
        wait_until(lambda: asked([gpu], since), 30, what="the GPU pilot waiting")
        (jid,) = ctrl.submit("alice", sh("true", tags=["gpu"]))
        for t in threads:
            t.join(60)
    finally:
        store.close()
    assert got[gpu][0] == jid
    assert got[gpu][1] - began < 4.5  # before its own re-check (5 s): it was woken
    assert all(got[p][0] is None for p in plain)
