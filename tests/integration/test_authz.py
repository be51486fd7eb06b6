"""The authorization matrix: every route of the OpenAPI document x every kind of caller
(anonymous, garbage, expired, revoked, user A, user B, pilot of X, second pilot of X, pilot
of Y, job token of a running job, of a finished job, admin), each cell's status asserted
against one real controller."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import MANUAL, Controller, new_controller, sh, wait_until

pytestmark = pytest.mark.integration
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # SHA-256 of b""
BOX = "26f8567f2569182294c3fa5b9f9cb2270b554eef628b4c149cf82a42888ff4ae"  # of b"box"

X = {**MANUAL, "lost_after": 600}  # endpoint X (tags linux, gpu); its pilots are the test
Y = {**X, "name": "other", "tags": ["linux"]}
Z = {**X, "name": "spare"}  # taken down and up by the matrix; no pilot there

CALLERS = ["anonymous", "garbage", "expired", "revoked", "user A", "user B", "pilot of X",
           "second pilot of X", "pilot of Y", "job token (running)", "job token (finished)",
           "admin"]
DEAD = {"anonymous", "garbage", "expired", "revoked", "job token (finished)"}
USERS = {"user A", "user B", "job token (running)", "admin"}  # may read (job: as user A)
PILOTS = {"pilot of X", "second pilot of X", "pilot of Y"}


@dataclass
class World:
    ctrl: Controller
    tokens: dict[str, str | None]
    x1: str  # pilot ids
    running: int  # user A's job, running on X1, with its output uploaded
    machine: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def call(self, who: str, method: str, path: str, body: Any = None,
             stream: bool = False) -> httpx.Response:
        token = self.tokens[who]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(body, bytes):  # a file's bytes
            return self.http.request(method, self.ctrl.url + path, content=body,
                                     headers=headers)
        if not stream:
            return self.http.request(method, self.ctrl.url + path, json=body, headers=headers)
        # an endless stream (server-sent events): its status, and the body of a refusal only
        with self.http.stream(method, self.ctrl.url + path, headers=headers) as r:
            if r.status_code >= 400:
                r.read()
            return r

    def waiting_job(self) -> int:
        (jid,) = self.ctrl.submit("alice", sh("true"))
        return jid

    def held_by_x1(self) -> int:
        """A job X1 holds now (matched), for a report."""
        self.waiting_job()
        r = self.call("pilot of X", "POST", f"/api/v1/pilots/{self.x1}/match",
                      {"free_cores": 8, "free_memory_mb": 8192, "free_slots": 1})
        assert r.status_code == 200, r.text
        return int(r.json()["matches"][0]["job"]["id"])

    def fresh_token_id(self) -> int:
        r = self.call("admin", "POST", "/api/v1/admin/tokens",
                      {"role": "user", "owner": "bob", "note": "to revoke"})
        tokens = self.call("admin", "GET", "/api/v1/admin/tokens").json()
        assert r.status_code == 201
        return int(max(t["id"] for t in tokens))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    ctrl = new_controller(tmp_path_factory.mktemp("authz"), [X, Y, Z], lease=600)
    from controller.auth import Role
    from controller.store import Store

    store = Store(ctrl.database)
    expired = store.tokens.issue(Role.USER, owner="alice", lifetime=0.5)
    store.close()
    ctrl.start()
    # X1 takes a job per caller of the report route: room for all of them
    x1, x2, y = (ctrl.register("manual", "x-one", slots=16, cores=32, memory_mb=32768),
                 ctrl.register("manual", "x-two"),
                 ctrl.register("other", "y-one"))
    with ctrl.client("admin") as c:
        revoked = c.post("/api/v1/admin/tokens", json={"role": "user", "owner": "alice"}
                         ).json()["token"]
        rid = max(t["id"] for t in c.get("/api/v1/admin/tokens").json())
        assert c.delete(f"/api/v1/admin/tokens/{rid}").status_code == 204
    running, finished = ctrl.submit("alice", sh("true"), sh("true"))
    with ctrl.client(x1) as c:
        got = {}
        for _ in range(2):
            (m,) = c.post(f"/api/v1/pilots/{x1}/match", json={
                "free_cores": 8, "free_memory_mb": 8192, "free_slots": 1}).json()["matches"]
            got[m["job"]["id"]] = m["token"]
        assert c.post(f"/api/v1/pilots/{x1}/heartbeat", json={"jobs": [
            {"id": running}]}).json()["stop"] == []
        assert c.post(f"/api/v1/pilots/{x1}/jobs/{running}/output",
                      json={"stdout": "hi"}).status_code == 204
        # an output file of the running job (empty), live output, and a sandbox of alice's
        assert c.post(f"/api/v1/pilots/{x1}/jobs/{running}/files", json={
            "attempt": 1, "files": [{"name": "out.txt", "size": 0, "sha256": EMPTY}]}
        ).status_code == 200
        assert c.put(f"/api/v1/pilots/{x1}/jobs/{running}/files/out.txt?attempt=1"
                     ).json()["complete"]
        assert c.post(f"/api/v1/pilots/{x1}/jobs/{running}/live",
                      json={"attempt": 1, "stdout": "live"}).status_code == 204
        assert c.post(f"/api/v1/pilots/{x1}/jobs/{finished}/report",
                      json={"status": "done", "exit_code": 0}).status_code == 200
    with ctrl.client("alice") as c:
        assert c.post("/api/v1/sandboxes", content=b"box").status_code == 201
    assert ctrl.job(running)["state"] == "running"
    time.sleep(0.6)  # the expired token's lifetime is over
    tokens: dict[str, str | None] = {
        "anonymous": None, "garbage": "cp_" + "x" * 43, "expired": expired,
        "revoked": revoked, "user A": ctrl.tokens["alice"], "user B": ctrl.tokens["bob"],
        "pilot of X": ctrl.tokens[x1], "second pilot of X": ctrl.tokens[x2],
        "pilot of Y": ctrl.tokens[y], "job token (running)": got[running],
        "job token (finished)": got[finished], "admin": ctrl.tokens["admin"]}
    w = World(ctrl, tokens, x1, running, "x-one")
    yield w
    w.http.close()
    ctrl.stop()


@dataclass
class Route:
    method: str
    path: str  # an OpenAPI path template
    url: Callable[[World], str]  # the concrete path, made fresh per cell when it must be
    allowed: dict[str, int]  # live callers -> status; every other live caller: 403
    body: Callable[[World, str], Any] = lambda w, who: None
    open: bool = False  # no token needed
    stream: bool = False  # an endless answer (server-sent events)


def users(ok: int, b: int | None = None, job: int | None = None,
          admin: int | None = None) -> dict[str, int]:
    """A user route: user A's object answers ok to A, to A's job token and to admins; user
    B gets `b` (404: another owner's object is not revealed)."""
    return {"user A": ok, "user B": ok if b is None else b,
            "job token (running)": ok if job is None else job,
            "admin": ok if admin is None else admin}


def own(path: str) -> Callable[[World], str]:
    return lambda w: path.format(x1=w.x1, running=w.running, machine=w.machine)


ROUTES = [
    Route("GET", "/api/v1/health", own("/api/v1/health"), {}, open=True),
    Route("GET", "/api/v1/pilot/code", own("/api/v1/pilot/code"), {}, open=True),
    # jobs (user A's objects)
    Route("POST", "/api/v1/jobs", own("/api/v1/jobs"), users(201, admin=403),
          body=lambda w, who: sh("true")),
    Route("POST", "/api/v1/jobs/bulk", own("/api/v1/jobs/bulk"), users(201, admin=403),
          body=lambda w, who: {"jobs": [sh("true")]}),
    Route("GET", "/api/v1/jobs", own("/api/v1/jobs"), users(200)),
    Route("GET", "/api/v1/jobs/{job_id}", own("/api/v1/jobs/{running}"), users(200, b=404)),
    Route("GET", "/api/v1/jobs/{job_id}/events", own("/api/v1/jobs/{running}/events"),
          users(200, b=404)),
    Route("GET", "/api/v1/jobs/{job_id}/output", own("/api/v1/jobs/{running}/output"),
          users(200, b=404)),
    # issue 22: a job's files and live output (a job token: its own job's only)
    Route("GET", "/api/v1/jobs/{job_id}/files", own("/api/v1/jobs/{running}/files"),
          users(200, b=404)),
    Route("GET", "/api/v1/jobs/{job_id}/files/{name}",
          own("/api/v1/jobs/{running}/files/out.txt"), users(200, b=404)),
    Route("GET", "/api/v1/jobs/{job_id}/live", own("/api/v1/jobs/{running}/live"),
          users(200, b=404)),
    # input sandboxes: the owners who sent one (admins act for no owner, but may read)
    Route("POST", "/api/v1/sandboxes", own("/api/v1/sandboxes"), users(201, admin=403),
          body=lambda w, who: f"box of {who}".encode()),
    Route("GET", "/api/v1/sandboxes", own("/api/v1/sandboxes"), users(200, admin=403)),
    Route("PUT", "/api/v1/sandboxes/{sha256}", own("/api/v1/sandboxes/" + BOX),
          users(200, b=404, admin=403), body=lambda w, who: b"box"),
    Route("GET", "/api/v1/sandboxes/{sha256}", own("/api/v1/sandboxes/" + BOX),
          users(200, b=404)),
    Route("POST", "/api/v1/jobs/{job_id}/kill",
          lambda w: f"/api/v1/jobs/{w.waiting_job()}/kill", users(200, b=404)),
    # what operators watch
    Route("GET", "/api/v1/endpoints", own("/api/v1/endpoints"), users(200)),
    Route("GET", "/api/v1/machines", own("/api/v1/machines"), users(200)),
    Route("GET", "/api/v1/machines/{name}/events", own("/api/v1/machines/{machine}/events"),
          users(200)),
    Route("GET", "/api/v1/taskqueues", own("/api/v1/taskqueues"), users(200)),
    Route("GET", "/api/v1/summary", own("/api/v1/summary"), users(200)),
    Route("GET", "/api/v1/shares", own("/api/v1/shares"), users(200)),
    # issue 25: accounting; a user's own owner rows (by=group or endpoint: admins only)
    Route("GET", "/api/v1/usage", own("/api/v1/usage?by=owner&since=30d"), users(200)),
    Route("GET", "/api/v1/plans", own("/api/v1/plans"), users(200)),
    Route("GET", "/api/v1/plans/{plan_id}", own("/api/v1/plans/999999"), users(404)),
    Route("GET", "/api/v1/endpoints/{name}/events", own("/api/v1/endpoints/manual/events"),
          users(200)),
    Route("GET", "/api/v1/endpoints/{name}/explain", own("/api/v1/endpoints/manual/explain"),
          users(200)),
    Route("GET", "/api/v1/endpoints/{endpoint}/hosts", own("/api/v1/endpoints/manual/hosts"),
          users(422)),  # not an SSH endpoint
    Route("GET", "/api/v1/endpoints/{endpoint}/hosts/events",
          own("/api/v1/endpoints/manual/hosts/events"), users(422)),
    Route("GET", "/api/v1/overview", own("/api/v1/overview"), users(200)),
    Route("GET", "/api/v1/events", own("/api/v1/events"), users(200), stream=True),
    # admins only (and, for /metrics, a metrics token)
    Route("GET", "/metrics", own("/metrics"), {"admin": 200}),
    Route("POST", "/api/v1/plans/{plan_id}/approve", own("/api/v1/plans/999999/approve"),
          {"admin": 404}),
    Route("POST", "/api/v1/endpoints/{name}/down", own("/api/v1/endpoints/spare/down"),
          {"admin": 200}),
    Route("POST", "/api/v1/endpoints/{name}/up", own("/api/v1/endpoints/spare/up"),
          {"admin": 200}),
    Route("POST", "/api/v1/endpoints/{endpoint}/hosts", own("/api/v1/endpoints/manual/hosts"),
          {"admin": 422}, body=lambda w, who: {"name": "h9", "address": "192.0.2.9"}),
    Route("DELETE", "/api/v1/endpoints/{endpoint}/hosts/{host}",
          own("/api/v1/endpoints/manual/hosts/h9"), {"admin": 422}),
    Route("GET", "/api/v1/ticks", own("/api/v1/ticks"), {"admin": 200}),
    # issue 25: the what-if (admins); another config with none of this controller's endpoints
    Route("POST", "/api/v1/whatif", own("/api/v1/whatif"), {"admin": 422},
          body=lambda w, who: {"since": "1h", "config": ""}),
    Route("GET", "/api/v1/ticks/{tick_id}", own("/api/v1/ticks/999999"), {"admin": 404}),
    Route("POST", "/api/v1/admin/users", own("/api/v1/admin/users"), {"admin": 201},
          body=lambda w, who: {"name": f"u{uuid.uuid4().hex[:8]}", "group": "g"}),
    Route("GET", "/api/v1/admin/users", own("/api/v1/admin/users"), {"admin": 200}),
    Route("POST", "/api/v1/admin/tokens", own("/api/v1/admin/tokens"), {"admin": 201},
          body=lambda w, who: {"role": "user", "owner": "bob"}),
    Route("GET", "/api/v1/admin/tokens", own("/api/v1/admin/tokens"), {"admin": 200}),
    Route("DELETE", "/api/v1/admin/tokens/{token_id}",
          lambda w: f"/api/v1/admin/tokens/{w.fresh_token_id()}", {"admin": 204}),
    # pilot routes, about pilot X1: only X1's own credential
    Route("POST", "/api/v1/pilots/register", own("/api/v1/pilots/register"), {},
          body=lambda w, who: {"machine": "z", "cores": 1, "memory_mb": 64, "slots": 1}),
    Route("POST", "/api/v1/pilots/{pilot_id}/match", own("/api/v1/pilots/{x1}/match"),
          {"pilot of X": 204},
          body=lambda w, who: {"free_cores": 8, "free_memory_mb": 8192, "free_slots": 0}),
    Route("POST", "/api/v1/pilots/{pilot_id}/heartbeat", own("/api/v1/pilots/{x1}/heartbeat"),
          {"pilot of X": 200}, body=lambda w, who: {"jobs": [{"id": w.running}]}),
    Route("POST", "/api/v1/pilots/{pilot_id}/jobs/{job_id}/output",
          own("/api/v1/pilots/{x1}/jobs/{running}/output"), {"pilot of X": 204},
          body=lambda w, who: {"stdout": f"from {who}"}),
    Route("POST", "/api/v1/pilots/{pilot_id}/jobs/{job_id}/files",
          own("/api/v1/pilots/{x1}/jobs/{running}/files"), {"pilot of X": 200},
          body=lambda w, who: {"attempt": 1, "files": [
              {"name": "out.txt", "size": 0, "sha256": EMPTY}]}),
    Route("PUT", "/api/v1/pilots/{pilot_id}/jobs/{job_id}/files/{name}",
          own("/api/v1/pilots/{x1}/jobs/{running}/files/out.txt?attempt=1"),
          {"pilot of X": 200}, body=lambda w, who: b""),
    Route("POST", "/api/v1/pilots/{pilot_id}/jobs/{job_id}/live",
          own("/api/v1/pilots/{x1}/jobs/{running}/live"), {"pilot of X": 204},
          body=lambda w, who: {"attempt": 1, "stdout": f"from {who}"}),
    Route("POST", "/api/v1/pilots/{pilot_id}/jobs/{job_id}/report",
          lambda w: f"/api/v1/pilots/{w.x1}/jobs/{w.held_by_x1()}/report",
          {"pilot of X": 200}, body=lambda w, who: {"status": "done", "exit_code": 0}),
    # last: X1 says goodbye (its credential dies with it)
    Route("DELETE", "/api/v1/pilots/{pilot_id}", own("/api/v1/pilots/{x1}"),
          {"pilot of X": 204}),
]


def expected(route: Route, who: str) -> int:
    if route.open:
        return 200
    if who in DEAD:
        return 401
    return route.allowed.get(who, 403)


def test_every_route_is_in_the_matrix(world):
    doc = httpx.get(world.ctrl.url + "/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}


def test_the_authorization_matrix(world):
    wait_until(lambda: world.call("admin", "GET", "/api/v1/endpoints/manual/explain"
                                  ).status_code == 200, what="a recorded tick")
    wrong = []
    cells = 0
    for route in ROUTES:
        # callers that may act go last, so what they change (a kill, a goodbye) is not
        # what the others are refused on
        for who in sorted(CALLERS, key=lambda c: expected(route, c) < 400):
            r = world.call(who, route.method, route.url(world), route.body(world, who),
                           stream=route.stream)
            cells += 1
            want = expected(route, who)
            if r.status_code != want:
                wrong.append(f"{route.method} {route.path} as {who}: {r.status_code} "
                             f"(want {want}) {r.text[:120]}")
            elif want >= 400:
                assert r.json()["detail"], (route.path, who)
    assert cells == len(ROUTES) * len(CALLERS)
    assert wrong == [], "\n".join(wrong)
    # what the refused callers tried changed nothing: the output is X1's, the job runs
    with world.ctrl.client("alice") as c:
        assert c.get(f"/api/v1/jobs/{world.running}/output").json()["stdout"] == \
            "from pilot of X"
    assert world.ctrl.job(world.running)["state"] == "running"


def test_users_see_only_their_own_task_queues(world):
    world.waiting_job()
    (bobs,) = world.ctrl.submit("bob", sh("true", cores=3))

    def queues(who: str, path: str) -> list[dict[str, Any]] | None:
        r = world.call(who, "GET", path)
        assert r.status_code == 200, r.text
        return list(r.json()["queues"] if path.endswith("explain") else r.json())

    for path in ("/api/v1/taskqueues", "/api/v1/endpoints/manual/explain"):
        # the tick recording both owners' queues may be a moment away
        wait_until(lambda p=path: {q["owner"] for q in queues("admin", p) or []}
                   >= {"alice", "bob"}, what=f"both owners' queues in {path}")
        assert {q["owner"] for q in queues("user A", path) or []} == {"alice"}
        assert {q["owner"] for q in queues("job token (running)", path) or []} == {"alice"}
        assert {q["owner"] for q in queues("user B", path) or []} == {"bob"}
    with world.ctrl.client("bob") as c:
        assert c.post(f"/api/v1/jobs/{bobs}/kill").status_code == 200
