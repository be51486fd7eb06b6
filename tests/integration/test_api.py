"""The user, pilot and admin API of a real controller: roles, bad input, listing, kill."""

import time

import httpx
import pytest

from controller.auth import Role
from controller.store import Store
from tests.conftest import MANUAL, sh, wait_until

pytestmark = pytest.mark.integration
OTHER = {**MANUAL, "name": "other", "tags": ["linux"]}


@pytest.fixture
def ctrl(make_controller):
    return make_controller(endpoints=[MANUAL, OTHER])


def register(c, pilot="pilot:manual", machine="m1", **kw):
    return c.register(pilot.removeprefix("pilot:"), machine, **kw)


def test_tokens_are_required_and_checked(ctrl):
    r = httpx.get(ctrl.url + "/api/v1/jobs")
    assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    r = httpx.get(ctrl.url + "/api/v1/jobs", headers={"Authorization": "Bearer cp_wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown token"
    store = Store(ctrl.database)
    expired = store.tokens.issue(Role.USER, owner="alice", lifetime=0.01)
    store.close()
    time.sleep(0.05)
    r = httpx.get(ctrl.url + "/api/v1/jobs", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["detail"] == "token expired"


def test_roles(ctrl):
    with ctrl.client("alice") as c:
        r = c.post("/api/v1/pilots/register",
                   json={"machine": "x", "cores": 1, "memory_mb": 1, "slots": 1})
        assert r.status_code == 403 and "a user token may not register" in r.json()["detail"]
        assert c.get("/api/v1/admin/users").status_code == 403
    with ctrl.client("pilot:manual") as c:
        r = c.post("/api/v1/jobs", json=sh("true"))
        assert r.status_code == 403 and "a bootstrap token may not" in r.json()["detail"]
        r = c.post("/api/v1/pilots/register", json={"machine": "x", "endpoint": "other",
                                                     "cores": 1, "memory_mb": 1, "slots": 1})
        assert r.status_code == 403 and "for endpoint manual" in r.json()["detail"]
    pid, other = register(ctrl), register(ctrl, "pilot:other", machine="o1")
    with ctrl.client(other) as c:  # a pilot of another endpoint
        r = c.post(f"/api/v1/pilots/{pid}/heartbeat", json={"jobs": []})
        assert r.status_code == 403
    with ctrl.client("admin") as c:
        assert c.get("/api/v1/admin/users").status_code == 200
        r = c.post("/api/v1/admin/tokens", json={"role": "pilot", "endpoint": "nowhere"})
        assert r.status_code == 422 and "no endpoint 'nowhere'" in r.json()["detail"]


def test_owners_see_only_their_jobs_and_job_tokens_act_for_the_owner(ctrl):
    (jid,) = ctrl.submit("alice", sh("true"))
    with ctrl.client("bob") as c:
        assert c.get(f"/api/v1/jobs/{jid}").status_code == 404
        assert c.post(f"/api/v1/jobs/{jid}/kill").status_code == 404
        assert c.get("/api/v1/jobs").json() == []
        assert c.get("/api/v1/jobs", params={"owner": "alice"}).status_code == 403
    pid = register(ctrl)
    with ctrl.client(pid) as c:
        (m,) = c.post(f"/api/v1/pilots/{pid}/match",
                      json={"free_cores": 4, "free_memory_mb": 4096, "free_slots": 2}
                      ).json()["matches"]
    assert m["job"]["id"] == jid and m["token_expires_in"] > 120
    job_client = httpx.Client(base_url=ctrl.url,
                              headers={"Authorization": f"Bearer {m['token']}"})
    assert job_client.get(f"/api/v1/jobs/{jid}").json()["owner"] == "alice"
    r = job_client.post(f"/api/v1/pilots/{pid}/heartbeat", json={"jobs": []})
    assert r.status_code == 403  # a job token is not a pilot token


def test_bad_input_gets_clear_4xx_and_writes_nothing(ctrl):
    with ctrl.client("alice") as c:
        r = c.post("/api/v1/jobs", content=b"{not json", headers={"Content-Type":
                                                                    "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["detail"]
        r = c.post("/api/v1/jobs", json={**sh("true"), "owner": "bob"})
        assert r.status_code == 422 and "owner: unknown field" in r.json()["detail"]
        r = c.post("/api/v1/jobs", json=sh("true", cores=-2))
        assert r.status_code == 422 and "requirements.cores" in r.json()["detail"]
        r = c.post("/api/v1/jobs/bulk", json={"jobs": [sh("true"), sh("true", memory_mb=0)]})
        assert r.status_code == 422 and "jobs.1.requirements.memory_mb" in r.json()["detail"]
        r = c.post("/api/v1/jobs/bulk", json={"jobs": []})
        assert r.status_code == 422
        r = c.post("/api/v1/jobs", json=sh("true", endpoints=["mars"]))
        assert r.status_code == 422 and "unknown endpoints ['mars']" in r.json()["detail"]
        r = c.post("/api/v1/jobs", json={**sh("true"), "inputs": [{"name": "../x",
                                                                    "content": "a"}]})
        assert r.status_code == 422
        assert c.get("/api/v1/jobs/999").status_code == 404
        assert c.get("/api/v1/jobs/abc").status_code == 422
        assert c.get("/api/v1/jobs").json() == []  # nothing half-written
        assert c.get("/api/v1/jobs", params={"state": "bogus"}).status_code == 422


def test_a_job_bigger_than_any_endpoint_is_accepted_and_reported(ctrl):
    with ctrl.client("alice") as c:
        r = c.post("/api/v1/jobs", json=sh("true", cores=64))
        assert r.status_code == 201
        jid = r.json()["ids"][0]
        why = r.json()["unmatchable"][str(jid)]
        assert why == ("no endpoint can run it: needs 64 cores, manual offers 8; "
                       "needs 64 cores, other offers 8")
        job = c.get(f"/api/v1/jobs/{jid}").json()
        assert job["state"] == "waiting" and job["waiting_reason"] == why
        tq = c.get("/api/v1/taskqueues").json()
        assert tq[0]["unmatchable"] == why


def test_pilot_reporting_on_a_job_it_does_not_hold(ctrl):
    (jid,) = ctrl.submit("alice", sh("true"))
    p1, p2 = register(ctrl, machine="m1"), register(ctrl, machine="m2")
    with ctrl.client(p2) as c:
        r = c.post(f"/api/v1/pilots/{p1}/match",  # p2's credential cannot act for p1
                   json={"free_cores": 1, "free_memory_mb": 1024, "free_slots": 1})
        assert r.status_code == 403 and "not pilot" in r.json()["detail"]
        r = c.post(f"/api/v1/pilots/{p2}/jobs/{jid}/report", json={"status": "done",
                                                                   "exit_code": 0})
        assert r.status_code == 409 and "not held by this pilot" in r.json()["detail"]
    with ctrl.client(p1) as c:
        r = c.post(f"/api/v1/pilots/{p1}/match",
                   json={"free_cores": 1, "free_memory_mb": 1024, "free_slots": 1})
        assert r.json()["matches"][0]["job"]["id"] == jid
    with ctrl.client(p2) as c:
        r = c.post(f"/api/v1/pilots/{p2}/jobs/{jid}/report", json={"status": "done",
                                                                   "exit_code": 0})
        assert r.status_code == 409 and "not held by this pilot" in r.json()["detail"]
        r = c.post(f"/api/v1/pilots/{p2}/jobs/{jid}/output", json={"stdout": "x"})
        assert r.status_code == 409
    with ctrl.client(p1) as c:
        r = c.post(f"/api/v1/pilots/{p1}/jobs/4242/report", json={"status": "done"})
        assert r.status_code == 404
        r = c.post(f"/api/v1/pilots/{p1}/jobs/{jid}/report", json={"status": "weird"})
        assert r.status_code == 422
        r = c.post(f"/api/v1/pilots/{p1}/jobs/{jid}/output", json={"stdout": "x" * 2_000_000})
        assert r.status_code == 413 and "at most" in r.json()["detail"]
        r = c.post("/api/v1/pilots/nope/heartbeat", json={"jobs": []})
        assert r.status_code == 403
    assert ctrl.job(jid)["state"] == "matched"


def test_list_filter_kill_and_events(ctrl):
    a = ctrl.submit("alice", sh("true"), sh("true"), sh("true"))
    ctrl.submit("bob", sh("true"))
    with ctrl.client("alice") as c:
        r = c.post(f"/api/v1/jobs/{a[0]}/kill")
        assert r.json()["state"] == "killed"
        r = c.post(f"/api/v1/jobs/{a[0]}/kill")
        assert r.status_code == 409 and "already killed" in r.json()["detail"]
        assert [j["id"] for j in c.get("/api/v1/jobs", params={"state": "waiting"}).json()] \
            == a[1:]
        ev = c.get(f"/api/v1/jobs/{a[0]}/events").json()
        assert [e["to_state"] for e in ev] == ["received", "waiting", "killed"]
        assert ev[-1]["reason"] == "killed by alice"
    with ctrl.client("admin") as c:
        assert len(c.get("/api/v1/jobs").json()) == 4
        assert len(c.get("/api/v1/jobs", params={"owner": "bob"}).json()) == 1
        assert c.get("/api/v1/jobs", params={"endpoint": "manual"}).json() == []
        s = c.get("/api/v1/summary").json()
        assert s["jobs"] == {"killed": 1, "waiting": 3}


def test_bootstrap_tokens_are_spent_and_revocation_takes_effect_at_once(ctrl):
    boot = ctrl.bootstrap("manual")
    body = {"machine": "b1", "cores": 1, "memory_mb": 512, "slots": 1}
    auth = {"Authorization": f"Bearer {boot}"}
    r = httpx.post(ctrl.url + "/api/v1/pilots/register", json=body, headers=auth)
    assert r.status_code == 201
    pid, cred = r.json()["pilot_id"], r.json()["token"]
    assert cred != boot
    # spent: the same bootstrap token registers nothing more
    r = httpx.post(ctrl.url + "/api/v1/pilots/register", json={**body, "machine": "b2"},
                   headers=auth)
    assert r.status_code == 401
    # a bootstrap token bound to a machine registers only that machine
    store = Store(ctrl.database)
    bound = store.tokens.issue(Role.PILOT, endpoint="manual", machine="b3")
    store.close()
    r = httpx.post(ctrl.url + "/api/v1/pilots/register", json={**body, "machine": "b4"},
                   headers={"Authorization": f"Bearer {bound}"})
    assert r.status_code == 403 and "for machine b3" in r.json()["detail"]
    # the pilot's credential works until it is revoked, then not once more
    mine = httpx.Client(base_url=ctrl.url, headers={"Authorization": f"Bearer {cred}"})
    assert mine.post(f"/api/v1/pilots/{pid}/heartbeat", json={"jobs": []}).status_code == 200
    with ctrl.client() as admin:
        (tid,) = [t["id"] for t in admin.get("/api/v1/admin/tokens").json()
                  if t["pilot_id"] == pid]
        assert admin.delete(f"/api/v1/admin/tokens/{tid}").status_code == 204
    r = mine.post(f"/api/v1/pilots/{pid}/heartbeat", json={"jobs": []})
    assert r.status_code == 401 and r.json()["detail"] == "unknown token"


def test_pilot_credentials_expire_unless_heartbeats_renew_them_and_die_with_a_lost_machine(
        make_controller):
    """Issue 26: a pilot's own credential lives twice its endpoint's max_machine_age (here
    2 s: 4 s) from its last renewal; a heartbeat renews it once a quarter of that has passed
    (not every time); expired, it gets 401 with the reason. A machine the loop declares lost
    takes its pilot's credential with it at once."""
    short = {**MANUAL, "name": "short", "max_machine_age": 2, "lost_after": 60}
    ctrl = make_controller(endpoints=[MANUAL, short])
    pid = ctrl.register("short", "s1")
    mine = httpx.Client(base_url=ctrl.url,
                        headers={"Authorization": f"Bearer {ctrl.tokens[pid]}"})
    beat = f"/api/v1/pilots/{pid}/heartbeat"

    def expires(pilot):
        with ctrl.client() as admin:
            return next(t["expires_at"] for t in admin.get("/api/v1/admin/tokens").json()
                        if t["pilot_id"] == pilot)

    first = expires(pid)
    assert mine.post(beat, json={"jobs": []}).status_code == 200
    assert expires(pid) == first  # fresh: the heartbeat wrote nothing to the credential
    time.sleep(1.2)
    assert mine.post(beat, json={"jobs": []}).status_code == 200
    renewed = expires(pid)
    assert renewed > first + 1
    assert mine.post(beat, json={"jobs": []}).status_code == 200 and expires(pid) == renewed
    # an idle pilot sends no heartbeats: its match (a long-poll's look) renews it as well
    time.sleep(1.2)
    ask = {"free_cores": 1, "free_memory_mb": 512, "free_slots": 1, "wait": 0}
    assert mine.post(f"/api/v1/pilots/{pid}/match", json=ask).status_code == 204
    renewed_by_match = expires(pid)
    assert renewed_by_match > renewed + 1
    time.sleep(max(0.0, renewed_by_match - time.time()) + 0.3)
    r = mine.post(beat, json={"jobs": []})
    assert r.status_code == 401 and "credential expired" in r.json()["detail"]
    r = mine.post(f"/api/v1/pilots/{pid}/match", json=ask)
    assert r.status_code == 401 and "max_machine_age" in r.json()["detail"]
    # lost (silent past lost_after): revoked at once, long before it would expire
    lost = ctrl.register("manual", "l1")
    theirs = httpx.Client(base_url=ctrl.url,
                          headers={"Authorization": f"Bearer {ctrl.tokens[lost]}"})
    assert theirs.post(f"/api/v1/pilots/{lost}/heartbeat", json={"jobs": []}).status_code == 200
    assert expires(lost) > time.time() + 3600

    def machine_lost():
        with ctrl.client() as admin:
            return any(m["name"] == "l1" and m["state"] == "lost" for m in
                       admin.get("/api/v1/machines", params={"all": True}).json())

    wait_until(machine_lost, 20, what="machine l1 to be lost")
    r = theirs.post(f"/api/v1/pilots/{lost}/heartbeat", json={"jobs": []})
    assert r.status_code == 401 and r.json()["detail"] == "unknown token"


def test_a_job_that_cannot_be_answered_is_never_claimed(ctrl):
    """A stored job whose answer cannot be written (a lone surrogate, as rows from before input
    checks could hold): the match's answer is written inside the claim's transaction, so the
    match fails and the job stays waiting, with no attempt and no token (issue 19: no callback
    from the store into the API, the guarantee kept)."""
    (jid,) = ctrl.submit("alice", sh("true"))
    store = Store(ctrl.database)
    try:
        with store.tx() as c:
            c.execute("UPDATE jobs SET env = ? WHERE id = ?", ('{"A": "\\ud800"}', jid))
    finally:
        store.close()
    pid = register(ctrl)
    with ctrl.client(pid) as c:
        r = c.post(f"/api/v1/pilots/{pid}/match",
                   json={"free_cores": 4, "free_memory_mb": 4096, "free_slots": 1})
    assert r.status_code == 500
    store = Store(ctrl.database)
    try:
        assert store.rows("SELECT state, attempt FROM jobs WHERE id = ?", (jid,))[0][:] \
            == ("waiting", 0)
        assert store.rows("SELECT COUNT(*) FROM attempts WHERE job_id = ?", (jid,))[0][0] == 0
    finally:
        store.close()
