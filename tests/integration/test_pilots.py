"""Real pilot processes against a real controller: running, kill, SIGKILL, SIGTERM, limits."""

import contextlib
import os
import re
import signal
import time

import pytest

from tests.conftest import PAYLOAD_PYTHON, sh, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def ctrl(make_controller):
    return make_controller()


def test_a_job_runs_with_inputs_env_token_and_output(ctrl, tmp_path):
    script = (
        "import os, json, urllib.request\n"
        "print(open('data.txt').read().strip())\n"
        "print('pilot token hidden:', 'CLOUDPILOT_PILOT_TOKEN' not in os.environ)\n"
        "print('mine:', os.environ['MINE'])\n"
        "req = urllib.request.Request(os.environ['CLOUDPILOT_URL'] + '/api/v1/jobs/' +"
        " os.environ['CLOUDPILOT_JOB_ID'], headers={'Authorization': 'Bearer ' +"
        " os.environ['CLOUDPILOT_JOB_TOKEN']})\n"
        "print('as owner:', json.load(urllib.request.urlopen(req))['owner'])\n"
        "open(os.environ['CLOUDPILOT_PROGRESS_FILE'], 'w').write('50%')\n"
    )
    job = {"executable": PAYLOAD_PYTHON, "arguments": ["run.py"], "env": {"MINE": "yes"},
           "inputs": [{"name": "run.py", "content": script},
                      {"name": "data.txt", "content_b64": "aGVsbG8gaW5wdXQ="}]}
    (jid,) = ctrl.submit("alice", job)
    ctrl.start_pilot("m1")
    j = ctrl.wait_state(jid, "done", "failed")
    with ctrl.client("alice") as c:
        out = c.get(f"/api/v1/jobs/{jid}/output").json()
    assert j["state"] == "done", out
    assert out["stdout"].splitlines() == ["hello input", "pilot token hidden: True",
                                          "mine: yes", "as owner: alice"]
    assert [e["to_state"] for e in ctrl.events(jid)] == ["received", "waiting", "matched",
                                                         "running", "done"]


def test_an_input_file_by_url(make_controller, tmp_path):
    import http.server
    import threading
    from functools import partial

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "table.csv").write_text("a,b\n1,2\n")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # loopback addresses are refused unless allowed: this test's server is on 127.0.0.1
    ctrl = make_controller(input_url_allow=["127.0.0.1/32"])
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/table.csv"
        (jid,) = ctrl.submit("alice", {**sh("cat t.csv"), "inputs": [{"name": "t.csv",
                                                                       "url": url}]})
        ctrl.start_pilot("m1")
        assert ctrl.wait_state(jid, "done", "failed")["state"] == "done"
        with ctrl.client("alice") as c:
            assert c.get(f"/api/v1/jobs/{jid}/output").json()["stdout"] == "a,b\n1,2\n"
    finally:
        server.shutdown()
        server.server_close()


def test_failures_time_limit_and_bounded_output(ctrl):
    fail, slow, loud = ctrl.submit(
        "alice", sh("echo oops >&2; exit 7"), sh("sleep 20", max_runtime=1),
        sh("head -c 300000 /dev/zero | tr '\\0' 'x'; echo; echo END"))
    ctrl.start_pilot("m1", slots=3, max_output_bytes=10_000)
    j = ctrl.wait_state(fail, "failed")
    assert (j["exit_code"], j["reason"]) == (7, "exited with code 7")
    j = ctrl.wait_state(slow, "failed")
    assert j["reason"] == "exceeded its max run time of 1s"
    ctrl.wait_state(loud, "done")
    with ctrl.client("alice") as c:
        out = c.get(f"/api/v1/jobs/{loud}/output").json()
        assert out["truncated"] and out["stdout"].endswith("END\n")
        assert len(out["stdout"]) <= 5_000
        assert c.get(f"/api/v1/jobs/{fail}/output").json()["stderr"] == "oops\n"


def payload_pid(marker: str) -> int | None:
    """The host's pid of a payload whose command line holds `marker` (a sandboxed payload
    has another pid in its own namespace, and writes nowhere the test can read)."""
    for d in os.listdir("/proc"):
        try:
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv[0] in (b"sleep", b"/bin/sleep", b"/usr/bin/sleep") and marker.encode() in argv:
            return int(d)
    return None


def test_kill_stops_a_running_payload(ctrl):
    (jid,) = ctrl.submit("alice", sh("exec sleep 20.0317"))
    ctrl.start_pilot("m1")
    ctrl.wait_state(jid, "running")
    pid = wait_until(lambda: payload_pid("20.0317"), what="the sandboxed payload")
    with ctrl.client("alice") as c:
        assert c.post(f"/api/v1/jobs/{jid}/kill").json()["state"] == "killed"
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, what="the payload to stop")
    log = ctrl.root / "pilots" / "m1" / "pilot.log"
    wait_until(lambda: re.search(rf"job {jid} \w+ \(exit|report of job {jid} ", log.read_text()),
               10, 0.1, "the pilot's report of the killed job")  # it must change nothing
    j = ctrl.job(jid)
    assert j["state"] == "killed" and j["reason"] == "killed by alice"


def test_pilot_killed_mid_job_stalls_and_reschedules(ctrl, tmp_path):
    mark, pidfile = tmp_path / "first-run", tmp_path / "payload.pid"
    script = (f"if [ -e {mark} ]; then echo second run; exit 0; fi; touch {mark}; "
              f"echo $$ > {pidfile}; exec sleep 15")
    (jid,) = ctrl.submit("alice", sh(script))
    # isolation none: the payload marks its first run in the test's directory
    p1 = ctrl.start_pilot("m1", isolation="none")
    ctrl.wait_state(jid, "running")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    os.kill(p1.pid, signal.SIGKILL)  # the pilot dies; its payload is orphaned
    # its shepherd ends it when it sees the pilot gone, and may have done so already
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    ctrl.wait_state(jid, "waiting", timeout=20)
    ctrl.start_pilot("m2", isolation="none")
    j = ctrl.wait_state(jid, "done", timeout=20)
    assert j["retries"] == 1 and j["machine"] == "m2"
    states = [e["to_state"] for e in ctrl.events(jid)]
    assert states == ["received", "waiting", "matched", "running", "stalled", "rescheduled",
                      "waiting", "matched", "running", "done"]
    with ctrl.client() as c:
        m1 = next(m for m in c.get("/api/v1/machines", params={"all": True}).json()
                  if m["name"] == "m1")
    assert m1["state"] == "lost"


def test_sigterm_reports_running_jobs_as_interrupted(ctrl):
    (jid,) = ctrl.submit("alice", sh("sleep 15"))
    p = ctrl.start_pilot("m1")
    ctrl.wait_state(jid, "running")
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0
    j = ctrl.job(jid)
    assert (j["state"], j["retries"], j["reschedules"]) == ("waiting", 0, 1)
    ev = ctrl.events(jid)
    assert ev[-2]["to_state"] == "rescheduled" and "SIGTERM" in ev[-2]["reason"]
    with ctrl.client() as c:
        m = c.get("/api/v1/machines", params={"all": True}).json()[0]
    assert m["state"] == "stopped" and "SIGTERM" in m["reason"]


def test_an_idle_pilot_exits_and_says_goodbye(ctrl):
    p = ctrl.start_pilot("m1", idle_timeout=1)
    assert p.wait(20) == 0
    with ctrl.client() as c:
        m = c.get("/api/v1/machines", params={"all": True}).json()[0]
    assert m["state"] == "stopped" and "idle for more than 1s" in m["reason"]


def test_a_payload_that_cannot_start_is_a_failed_job_with_the_reason(ctrl):
    missing, not_executable = ctrl.submit(
        "alice", {"executable": "/nonexistent/tool", "requirements": {"max_runtime": 60}},
        {**sh("./run.sh"), "inputs": [{"name": "run.sh", "content": "echo not executable"}]})
    ctrl.start_pilot("m1", slots=2)
    j = ctrl.wait_state(missing, "failed")
    assert j["reason"] == "could not start: /nonexistent/tool: no such executable"
    j = ctrl.wait_state(not_executable, "done", "failed")
    assert j["state"] == "failed"  # sh ran it and said why: permission denied, exit 126
    with ctrl.client("alice") as c:
        out = c.get(f"/api/v1/jobs/{not_executable}/output").json()
    assert "Permission denied" in out["stderr"]


def test_pilots_cut_off_from_their_controller_leave_idle_at_once_busy_after_their_jobs(
        make_controller):
    """Issue 26: the controller dies (SIGKILL by PID). An idle pilot leaves within its orphan
    timeout, retrying in the match call or not; a busy one first runs its job to its end (it
    cannot report it: the job's lease runs out, as the controller's own record says), then
    leaves. Both exit 0, so a cloud machine powers itself off."""
    ctrl = make_controller(lease=6)
    (jid,) = ctrl.submit("alice", sh("sleep 3; echo finished"))
    busy = ctrl.start_pilot("busy", orphan_timeout=2, idle_timeout=600)
    ctrl.wait_state(jid, "running")
    idle = ctrl.start_pilot("idle", orphan_timeout=2, idle_timeout=600)
    log = ctrl.root / "pilots" / "idle" / "pilot.log"
    wait_until(lambda: "registered as pilot" in log.read_text(), what="the idle pilot")
    assert ctrl.proc is not None
    os.kill(ctrl.proc.pid, signal.SIGKILL)
    cut = time.monotonic()
    # connection refused at once; the client's back-off (0.5, 1, 2, 4 s) bounds the lag
    assert idle.wait(15) == 0
    idle_left = time.monotonic() - cut
    assert 2 <= idle_left < 12, idle_left
    assert "unreachable for more than 2s (orphan timeout)" in log.read_text()
    assert busy.wait(20) == 0
    busy_left = time.monotonic() - cut
    blog = (ctrl.root / "pilots" / "busy" / "pilot.log").read_text()
    # the payload ran to its end before the pilot left, which it did once the lease was out
    assert f"report of job {jid} not delivered" in blog
    assert blog.index(f"report of job {jid} not delivered") < blog.index("pilot exiting")
    assert busy_left > 3 and busy_left > idle_left, (busy_left, idle_left)
    assert "orphan timeout" in blog
    ctrl.proc = None


def test_a_pilot_whose_credential_is_revoked_kills_its_payloads_and_leaves(ctrl):
    """Issue 26: a heartbeat refused with 401 (the credential expired, or was revoked with its
    machine) means nothing the pilot holds is its own any more: it kills its payloads at once
    and leaves, even with every slot busy (no match call to find out)."""
    (jid,) = ctrl.submit("alice", sh("sleep 30"))
    p = ctrl.start_pilot("m1")
    ctrl.wait_state(jid, "running")
    with ctrl.client() as admin:
        (tid,) = [t["id"] for t in admin.get("/api/v1/admin/tokens").json() if t["pilot_id"]]
        assert admin.delete(f"/api/v1/admin/tokens/{tid}").status_code == 204
    assert p.wait(20) == 0
    log = (ctrl.root / "pilots" / "m1" / "pilot.log").read_text()
    assert "stopping every payload and leaving" in log
    assert "exiting: the controller no longer accepts this pilot" in log
    ctrl.wait_state(jid, "waiting", timeout=20)  # its lease ran out: back in the queue
