"""Poison input against a real controller: each gets a 4xx with a message and changes nothing;
what a pilot cannot start is a failed job with its reason."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MANUAL, new_controller, sh

pytestmark = pytest.mark.integration
BIG = 2**63


@pytest.fixture(scope="module")
def ctrl(tmp_path_factory):
    """One controller for the whole module (nothing here may change it)."""
    c = new_controller(tmp_path_factory.mktemp("inputs"), [MANUAL], max_bulk_jobs=10,
                       max_request_bytes=2 * 1024 * 1024)
    c.start()
    yield c
    c.stop()


def raw(ctrl, who, method, path, body: str | bytes, **headers):
    data = body.encode() if isinstance(body, str) else body
    with ctrl.client(who) as c:
        return c.request(method, path, content=data,
                         headers={"Content-Type": "application/json", **headers})


def job(**over):
    return {**sh("true"), **over}


POISON_JOBS = {
    "lone surrogate in an argument": '{"executable": "/bin/sh", "arguments": ["\\ud800"]}',
    "lone surrogate in an env value": '{"executable": "/bin/sh", "env": {"A": "x\\udfff"}}',
    "NUL in an argument": '{"executable": "/bin/sh", "arguments": ["a\\u0000b"]}',
    "NUL in an env value": '{"executable": "/bin/sh", "env": {"A": "\\u0000"}}',
    "NUL in the name": '{"executable": "/bin/sh", "name": "n\\u0000"}',
    "NUL in the executable": '{"executable": "/bin/sh\\u0000"}',
    "NUL in an input's content": json.dumps(job(inputs=[{"name": "a", "content": "\0"}])),
    "a surrogate in a tag": '{"executable": "/bin/sh", "requirements": {"tags": ["\\ud83d"]}}',
    "invalid base64": json.dumps(job(inputs=[{"name": "a", "content_b64": "not base64!"}])),
    "a boolean for cores": json.dumps(job(requirements={"cores": True})),
    "a string for a priority": json.dumps(job(priority="5")),
    "a float for memory": json.dumps(job(requirements={"memory_mb": 1.5})),
    "an argument of 200 KB": json.dumps(job(arguments=["x" * 200_000])),
    "5,000 arguments": json.dumps(job(arguments=["x"] * 5000)),
    "2,000 env variables": json.dumps(job(env={f"V{i}": "x" for i in range(2000)})),
    "arguments and env over 1 MB": json.dumps(job(arguments=["x" * 100_000] * 11)),
    "a 1 MB tag": json.dumps(job(requirements={"tags": ["t" * 1_000_000]})),
    "an env name with =": json.dumps(job(env={"A=B": "x"})),
    "an env name of the pilot's": json.dumps(job(env={"CLOUDPILOT_JOB_TOKEN": "x"})),
    "a file URL": json.dumps(job(inputs=[{"name": "a", "url": "file:///etc/passwd"}])),
    "the metadata URL": json.dumps(job(inputs=[{
        "name": "a", "url": "http://169.254.169.254/latest/user-data"}])),
    "a loopback URL": json.dumps(job(inputs=[{"name": "a", "url": "http://127.0.0.1:8080/"}])),
    "localhost": json.dumps(job(inputs=[{"name": "a", "url": "http://localhost/x"}])),
    "an IPv6 loopback URL": json.dumps(job(inputs=[{"name": "a", "url": "http://[::1]/x"}])),
    "a private address": json.dumps(job(inputs=[{"name": "a", "url": "https://10.1.2.3/"}])),
    "a mapped metadata address": json.dumps(job(inputs=[{
        "name": "a", "url": "http://[::ffff:169.254.169.254]/"}])),
    "an input named .stdout": json.dumps(job(inputs=[{"name": ".stdout", "content": "x"}])),
}


@pytest.mark.parametrize("what", list(POISON_JOBS))
def test_poison_jobs_get_422_and_change_nothing(ctrl, what):
    body = POISON_JOBS[what]
    r = raw(ctrl, "alice", "POST", "/api/v1/jobs", body)
    assert r.status_code == 422, (what, r.text)
    assert r.json()["detail"] and r.json()["errors"]
    bulk = '{"jobs": [' + body + "]}"
    assert raw(ctrl, "alice", "POST", "/api/v1/jobs/bulk", bulk).status_code == 422
    with ctrl.client("alice") as c:
        assert c.get("/api/v1/jobs").json() == []  # nothing was written
        assert c.get("/api/v1/taskqueues").json() == []


def test_integers_beyond_the_store_and_wrong_types(ctrl):
    with ctrl.client("alice") as c:
        for path in (f"/api/v1/jobs/{BIG}", f"/api/v1/jobs/{BIG}/events",
                     f"/api/v1/jobs/{BIG}/output", f"/api/v1/plans/{BIG}"):
            r = c.get(path)
            assert r.status_code == 422, (path, r.text)
        assert c.post(f"/api/v1/jobs/{BIG}/kill").status_code == 422
        assert c.get("/api/v1/jobs", params={"offset": BIG}).status_code == 422
        assert c.get("/api/v1/jobs", params={"limit": "true"}).status_code == 422
    with ctrl.client("admin") as c:
        assert c.delete(f"/api/v1/admin/tokens/{BIG}").status_code == 422
        assert c.get(f"/api/v1/ticks/{BIG}").status_code == 422
        boot = c.post("/api/v1/admin/tokens", json={"role": "pilot", "endpoint": "manual"}
                      ).json()["token"]
    h = {"Authorization": f"Bearer {boot}"}
    reg = {"machine": "m1", "cores": 1, "memory_mb": BIG, "slots": 1}
    r = httpx.post(ctrl.url + "/api/v1/pilots/register", json=reg, headers=h)
    assert r.status_code == 422  # refused before the bootstrap token is spent
    r = httpx.post(ctrl.url + "/api/v1/pilots/register", headers=h,
                   json={**reg, "memory_mb": 1024, "cores": True})
    assert r.status_code == 422
    r = httpx.post(ctrl.url + "/api/v1/pilots/register", json={**reg, "memory_mb": 1024},
                   headers=h)
    assert r.status_code == 201
    pid, cred = r.json()["pilot_id"], r.json()["token"]
    with httpx.Client(base_url=ctrl.url, headers={"Authorization": f"Bearer {cred}"}) as c:
        assert c.post(f"/api/v1/pilots/{pid}/heartbeat",
                      json={"jobs": [{"id": BIG}]}).status_code == 422
        assert c.post(f"/api/v1/pilots/{pid}/jobs/{BIG}/report",
                      json={"status": "done"}).status_code == 422
        assert c.post(f"/api/v1/pilots/{pid}/jobs/1/report",
                      json={"status": "failed", "exit_code": BIG}).status_code == 422
        assert c.post(f"/api/v1/pilots/{pid}/match", json={
            "free_cores": BIG, "free_memory_mb": 1, "free_slots": 1}).status_code == 422
        assert c.post(f"/api/v1/pilots/{pid}/match", json={
            "free_cores": "1", "free_memory_mb": 1, "free_slots": 1}).status_code == 422
        assert c.delete(f"/api/v1/pilots/{pid}").status_code == 204


def test_sizes_encoding_and_bulk_count_are_checked_before_parsing(ctrl):
    # a body over max_request_bytes: 413 from its Content-Length, before it is read
    r = raw(ctrl, "alice", "POST", "/api/v1/jobs/bulk", b"{" + b" " * 3_000_000 + b"}")
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    # more jobs than max_bulk_jobs: 413, even when every job is invalid (counted first)
    many = json.dumps({"jobs": [{"executable": 5}] * 11})
    r = raw(ctrl, "alice", "POST", "/api/v1/jobs/bulk", many)
    assert r.status_code == 413 and "at most 10 jobs" in r.json()["detail"]
    # invalid UTF-8: 422, not 400
    r = raw(ctrl, "alice", "POST", "/api/v1/jobs", b'{"executable": "/bin/\xff"}')
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]
    with ctrl.client("alice") as c:
        assert c.get("/api/v1/jobs").json() == []


def test_admin_tokens_have_no_owner_and_do_not_submit(ctrl):
    with ctrl.client("admin") as c:
        r = c.post("/api/v1/admin/tokens", json={"role": "admin", "owner": "alice"})
        assert r.status_code == 422 and "has no owner" in r.json()["detail"]
        r = c.post("/api/v1/admin/tokens", json={"role": "pilot", "endpoint": "manual",
                                                 "owner": "alice"})
        assert r.status_code == 422
        r = c.post("/api/v1/jobs", json=sh("true"))
        assert r.status_code == 403 and "user token" in r.json()["detail"]
        assert c.get("/api/v1/jobs").json() == []
