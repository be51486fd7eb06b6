"""GET /api/v1/events: server-sent events filtered by role, resumable with Last-Event-ID."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx

from controller.cli.sse import SseEvent, parse
from tests.conftest import MANUAL, sh


def read(ctrl: Any, who: str, n: int, params: dict[str, Any] | None = None,
         last_id: str | None = None, within: float = 10.0) -> list[SseEvent]:
    """The first n events of a stream (fewer if `within` seconds pass)."""
    headers = {"Authorization": f"Bearer {ctrl.tokens[who]}"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    out: list[SseEvent] = []
    deadline = time.monotonic() + within
    with contextlib.suppress(httpx.ReadTimeout), httpx.stream(
            "GET", ctrl.url + "/api/v1/events", params=params or {}, headers=headers,
            timeout=httpx.Timeout(5.0, read=within)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for ev in parse(r.iter_lines()):
            out.append(ev)
            if len(out) >= n or time.monotonic() > deadline:
                break
    return out


def test_events_by_role_and_resume(make_controller: Any) -> None:
    ctrl = make_controller(endpoints=[MANUAL])
    mine = ctrl.submit("alice", sh("echo a"), sh("echo b"))
    theirs = ctrl.submit("bob", sh("echo c"))
    ctrl.start_pilot("m1", slots=2)
    for i in mine + theirs:
        ctrl.wait_state(i, "done")

    # alice sees her jobs' events (and the fleet's), never bob's
    jobs = {"kinds": "job", "since": "start"}
    alice = read(ctrl, "alice", 10, jobs)
    assert len(alice) == 10 and all(e.event == "job" for e in alice)
    assert {e.json()["job"] for e in alice} == set(mine)
    admin = read(ctrl, "admin", 15, jobs)
    assert {e.json()["job"] for e in admin} == set(mine + theirs)
    # each job went received -> waiting -> matched -> running -> done
    seq = [e.json()["to_state"] for e in alice if e.json()["job"] == mine[0]]
    assert seq == ["received", "waiting", "matched", "running", "done"]

    # resume after the third event: the stream goes on with the fourth, nothing twice
    again = read(ctrl, "alice", 3, jobs, last_id=alice[2].id)
    assert [(e.id, e.data) for e in again] == [(e.id, e.data) for e in alice[3:6]]

    # machine events come to users too; a job filter gives that job's events only
    machines = read(ctrl, "alice", 1, {"kinds": "machine", "since": "start"})
    assert machines[0].json()["machine"] == "m1" and machines[0].json()["to_state"] == "running"
    one = read(ctrl, "bob", 5, {"job": theirs[0], "since": "start"})
    assert [e.json()["to_state"] for e in one][-1] == "done"

    # new events arrive live
    with httpx.Client(base_url=ctrl.url, timeout=10,
                      headers={"Authorization": f"Bearer {ctrl.tokens['alice']}"}) as c:
        live: list[SseEvent] = []
        with c.stream("GET", "/api/v1/events", params={"kinds": "job"}) as r:
            new = ctrl.submit("alice", sh("echo live"))
            for ev in parse(r.iter_lines()):
                live.append(ev)
                if ev.json()["to_state"] == "done":
                    break
        assert {e.json()["job"] for e in live} == set(new)

    # refusals: other owners' jobs, pilot tokens, bad input
    def status(who: str, **params: Any) -> int:
        return httpx.get(ctrl.url + "/api/v1/events", params=params, timeout=5, headers={
            "Authorization": f"Bearer {ctrl.tokens[who]}", "Last-Event-ID": params.pop(
                "last", "")} if "last" in params else {
            "Authorization": f"Bearer {ctrl.tokens[who]}"}).status_code

    assert status("alice", job=theirs[0]) == 404
    assert status("pilot:manual") == 403
    assert status("alice", kinds="job,secrets") == 422
    assert status("alice", last="1.2.x") == 422
    assert httpx.get(ctrl.url + "/api/v1/events", timeout=5).status_code == 401
