"""Predicted run times on the live controller (issue 23): a job that ends done leaves its real
run time in the store, and the scheduler's next ticks see each task queue with its next job's
predicted run time (its owner's history; none: the request) and each busy machine with when
its jobs should end, as the simulator does. `cloudpilot explain` shows both."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, sh, wait_until
from tests.integration.test_spot import PRICE_ROWS, priced_toml

pytestmark = pytest.mark.integration


def test_a_short_owners_jobs_are_planned_with_the_prediction_not_the_request(
        make_controller, tmp_path):
    prices = tmp_path / "prices.tsv"
    prices.write_text("".join(f"SPOTINSTANCEPRICE\t{p}\t{t}\t{ty}\tLinux/UNIX\t{z}\n"
                              for p, t, ty, z in PRICE_ROWS))
    ctrl = make_controller(endpoints=[{"name": "ec2"}], start=False)
    top = ctrl.config.read_text().split("\n[[endpoints]]")[0]
    ctrl.config.write_text(top + priced_toml(prices, max_machines=1))  # one 1-core machine
    ctrl.start()
    (first,) = ctrl.submit("alice", sh("sleep 1"))  # may run 120 s (sh()'s), runs ~1 s
    done = ctrl.wait_state(first, "done", "failed", timeout=40)
    assert done["state"] == "done"
    ran = done["ended_at"] - done["started_at"]
    (long,) = ctrl.submit("bob", sh("sleep 60"))  # holds the machine; bob has no history
    running = ctrl.wait_state(long, "running", timeout=30)
    alice, carol = ctrl.submit("alice", sh("true")) + ctrl.submit("carol", sh("true"))

    def explained():
        with ctrl.client() as c:
            doc = c.get("/api/v1/endpoints/ec2/explain").json()
        owners = {q["owner"]: q for q in doc["queues"]}
        return doc if {"alice", "carol"} <= set(owners) and doc["machines"] else None

    doc = wait_until(explained, 20, 0.2, "a tick that saw alice's and carol's jobs waiting")
    queues = {q["owner"]: q for q in doc["queues"]}
    limit = queues["carol"]["requirements"]["max_runtime"]
    assert limit == 120
    # alice's next job: the run time her last one really had, not the 120 s she asked for
    assert queues["alice"]["predicted_runtime"] == pytest.approx(ran, abs=0.5)
    assert queues["carol"]["predicted_runtime"] == limit  # nothing known: the request
    # bob's running job: nothing known of bob either, so it should end at its limit
    (m,) = [m for m in doc["machines"] if m["busy_slots"]]
    assert m["busy_until"] == pytest.approx(running["started_at"] + limit, abs=2.0)
    env = {"CLOUDPILOT_URL": ctrl.url, "CLOUDPILOT_TOKEN": ctrl.tokens["admin"]}
    out = subprocess.run([sys.executable, "-m", "controller", "explain", "ec2"], cwd=REPO,
                         capture_output=True, text=True, timeout=30, env={**env, "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert f"run time {ran:.0f}s predicted (max_runtime 120s)" in out.stdout
    assert "run time 120s predicted (max_runtime 120s)" in out.stdout
    assert "its jobs should end in" in out.stdout
    # the recorded tick replays to the same decision: the plan was made with these inputs
    tick = doc["tick"]
    same = subprocess.run([sys.executable, "-m", "controller", "replay", "--tick", str(tick)],
                          cwd=REPO, capture_output=True, text=True, timeout=30, env=env)
    assert same.returncode == 0 and "the same decision" in same.stdout, same.stdout
    with ctrl.client() as c:
        assert c.post(f"/api/v1/jobs/{long}/kill").status_code == 200
    for jid in (alice, carol):
        assert ctrl.wait_state(jid, "done", "failed", timeout=40)["state"] == "done"
