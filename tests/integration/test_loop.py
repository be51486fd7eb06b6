"""The whole loop with the local driver: queue -> scheduler -> machines -> pilots -> jobs ->
idle machines stopped; restarts and lost machines."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import LOCAL, REPO, sh, wait_until

pytestmark = pytest.mark.integration


def machines(ctrl, all=True):
    with ctrl.client() as c:
        return c.get("/api/v1/machines", params={"all": all}).json()


def test_demo_end_to_end():
    r = subprocess.run([sys.executable, "-m", "controller", "demo"], cwd=REPO,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "job 11 will wait: no endpoint can run it: needs 16 cores, local offers 2" in out
    assert "summary after" in out and "16 done, 2 failed, 1 waiting" in out
    assert "failed on local-" in out and "exited with code 3" in out
    assert "machines: 0 up, 0 booting" in out
    assert "stopped" in out.split("machines used:")[1]
    # issue 22: one job's output file fetched back, one job's output followed while it ran
    assert ("job 1's output file events.csv fetched back (20 bytes, SHA-256 checked): "
            "'batch,events\\n0,1000'") in out
    live = [line for line in out.splitlines() if line.startswith("  live, job 2: ")]
    assert [line.rsplit(" ", 1)[1] for line in live] == ["1", "2", "3", "4", "5", "6"]


def test_scale_up_run_and_scale_down_by_name(make_controller):
    ctrl = make_controller(endpoints=[LOCAL])
    ids = ctrl.submit("alice", *[sh("sleep 1")] * 6)
    peak = 0
    stop = threading.Event()

    def watch():
        nonlocal peak
        while not stop.is_set():
            live = [m for m in machines(ctrl, all=False) if m["state"] != "stopping"]
            peak = max(peak, len(live))
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    try:
        for jid in ids:
            assert ctrl.wait_state(jid, "done", "failed", timeout=30)["state"] == "done"
        wait_until(lambda: machines(ctrl, all=False) == [], 20, what="idle machines to stop")
    finally:
        stop.set()
        t.join()
    assert peak == 2  # max_machines
    ms = machines(ctrl)
    assert {m["name"] for m in ms} == {"local-0001", "local-0002"}
    with ctrl.client() as c:
        ev = c.get("/api/v1/machines/local-0001/events").json()
    assert [e["to_state"] for e in ev] == ["requested", "booting", "running", "stopping",
                                           "stopped"]
    assert "idle for" in ev[3]["reason"]
    # no pilot process is left behind
    for d in (ctrl.root / "data-machines" / "local").iterdir():
        assert not (d / "pilot.pid").exists()


def test_controller_restart_mid_run_loses_nothing(make_controller):
    ctrl = make_controller(endpoints=[{**LOCAL, "idle_timeout": 3}])
    ids = ctrl.submit("alice", *[sh("sleep 3; echo ok")] * 4)
    wait_until(lambda: sum(ctrl.job(i)["state"] == "running" for i in ids) >= 2, 20,
               what="jobs running")
    ctrl.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    more = None
    time.sleep(2)
    ctrl.start()
    more = ctrl.submit("bob", sh("echo after restart"))
    for jid in ids + more:
        j = ctrl.wait_state(jid, "done", "failed", timeout=40)
        assert j["state"] == "done", j
        assert j["retries"] == 0  # the pilots kept their jobs through the restart
    with ctrl.client("alice") as c:
        assert all(c.get(f"/api/v1/jobs/{i}/output").json()["stdout"] == "ok\n" for i in ids)


def test_a_lost_local_machine_has_its_jobs_rescheduled(make_controller, tmp_path):
    # isolation none: the payload marks its first run in the test's directory
    ctrl = make_controller(endpoints=[{**LOCAL, "max_machines": 1, "slots": 1,
                                       "isolation": "none"}])
    mark = tmp_path / "first"
    (jid,) = ctrl.submit("alice", sh(f"if [ -e {mark} ]; then exit 0; fi; touch {mark}; "
                                     "exec sleep 10"))
    j = ctrl.wait_state(jid, "running", timeout=20)
    pid = int((ctrl.root / "data-machines" / "local" / j["machine"] / "pilot.pid")
              .read_text())
    os.killpg(pid, signal.SIGKILL)  # the machine dies with its payload
    j2 = ctrl.wait_state(jid, "done", timeout=30)
    assert j2["retries"] == 1 and j2["machine"] != j["machine"]
    lost = next(m for m in machines(ctrl) if m["name"] == j["machine"])
    assert lost["state"] in ("lost", "stopped")
    with ctrl.client() as c:
        ev = c.get(f"/api/v1/machines/{j['machine']}/events").json()
    assert "lost" in [e["to_state"] for e in ev]
