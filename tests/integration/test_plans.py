"""Plans end to end against a real controller: the local driver with manual and automatic
approval, superseded plans, a failing apply and its back-off, `down` and `up`; a cloud endpoint
on a machine without the `pulumi` CLI; and no secret in any log."""

import json
import os
import re
import subprocess
import sys

import pytest

from controller.drivers.pulumi import missing_cli_message
from tests.conftest import LOCAL, REPO, path_without, sh, wait_until

pytestmark = pytest.mark.integration


def cli(ctrl, *args, who="admin"):
    env = dict(os.environ, CLOUDPILOT_URL=ctrl.url, CLOUDPILOT_TOKEN=ctrl.tokens[who])
    return subprocess.run([sys.executable, "-m", "controller", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


def plans(ctrl, **params):
    with ctrl.client() as c:
        r = c.get("/api/v1/plans", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def endpoint(ctrl, name):
    with ctrl.client() as c:
        return next(e for e in c.get("/api/v1/endpoints").json() if e["name"] == name)


def machines(ctrl):
    with ctrl.client() as c:
        return {m["name"]: m["state"] for m in
                c.get("/api/v1/machines", params={"all": True}).json()}


def assert_no_secret_logged(ctrl, started_machines=True):
    """The machines' bootstrap tokens appear in no log and in no plan."""
    tokens = [p.read_text().strip()
              for p in (ctrl.root / "data" / "secrets").glob("*/*.pilot-token")]
    assert bool(tokens) == started_machines
    logs = [ctrl.log()] + [p.read_text(errors="replace") for d in ("data", "data-machines")
                           for p in (ctrl.root / d).rglob("*.log")]
    shown = json.dumps(plans(ctrl, limit=1000))
    for t in tokens:
        assert all(t not in text for text in logs)
        assert t not in shown


def test_manual_approval_superseded_plans_and_up(make_controller):
    ctrl = make_controller(endpoints=[{**LOCAL, "auto_apply": False, "slots": 1,
                                       "max_machines": 3, "max_starts_per_cycle": 3}])
    (first,) = ctrl.submit("alice", sh("echo one"))
    p1 = wait_until(lambda: plans(ctrl, state="pending"), 10, what="a pending plan")[0]
    assert p1["create"] == ["local-0001"] and p1["asked_by"] == "scheduler"
    assert "waits for approval" in p1["message"]
    ids = ctrl.submit("alice", sh("echo two"), sh("echo three"))
    p2 = wait_until(lambda: [p for p in plans(ctrl, state="pending") if p["id"] != p1["id"]],
                    10, what="a second plan")[0]
    assert p2["create"] == ["local-0001", "local-0002", "local-0003"]
    old = plans(ctrl, state="superseded")[0]
    assert old["id"] == p1["id"] and old["message"] == f"replaced by plan {p2['id']}"
    # nothing was started while the plans waited
    assert machines(ctrl) == {} and ctrl.job(first)["state"] == "waiting"
    assert not list((ctrl.root / "data-machines" / "local").iterdir())
    assert f"cloudpilot plan approve {p2['id']}" in endpoint(ctrl, "local")["message"]

    r = cli(ctrl, "plan", "approve", str(p1["id"]))
    assert r.returncode == 1 and "superseded" in r.stderr and "HTTP 409" in r.stderr
    r = cli(ctrl, "plan", "approve", str(p2["id"]), who="alice")
    assert r.returncode == 1 and "HTTP 403" in r.stderr
    r = cli(ctrl, "plan", "approve", str(p2["id"]))
    assert r.returncode == 0 and "approved" in r.stdout, r.stderr
    for jid in [first, *ids]:
        assert ctrl.wait_state(jid, "done", "failed", timeout=30)["state"] == "done"
    wait_until(lambda: plans(ctrl, state="applied"), 5, what="the plan applied")
    r = cli(ctrl, "plan", "show", str(p2["id"]))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"plan {p2['id']} for endpoint local: applied" in out
    assert "+ local-0003   new machine" in out and "approved by admin token" in out
    assert "pending ->" in out and "approved -> applying" in out and "applying -> applied" in out

    # the idle machines go through a plan too: it waits, and `cloudpilot up` applies it
    down_plan = wait_until(lambda: [p for p in plans(ctrl, state="pending") if p["delete"]],
                           20, what="a scale-down plan")[0]
    assert set(down_plan["delete"]) <= {"local-0001", "local-0002", "local-0003"}
    r = cli(ctrl, "up", "local")  # approves the pending plan (a newer one may have replaced it)
    assert r.returncode == 0 and "approved; the loop applies it now" in r.stdout, r.stderr

    def settled():  # the others go by later plans: approve them as they come
        with ctrl.client() as c:
            for p in plans(ctrl, state="pending"):
                c.post(f"/api/v1/plans/{p['id']}/approve")
        return all(s == "stopped" for s in machines(ctrl).values())

    wait_until(settled, 20, 0.3, what="idle machines stopped")
    r = cli(ctrl, "plans", "--endpoint", "local")
    assert r.returncode == 0 and "superseded" in r.stdout and "applied" in r.stdout
    assert_no_secret_logged(ctrl)


def test_automatic_plans_and_a_failing_apply(make_controller):
    ctrl = make_controller(endpoints=[{**LOCAL, "max_machines": 1, "slots": 1}], start=False)
    # local-0001 cannot be made: its machine directory is taken by a file
    root = ctrl.root / "data-machines" / "local"
    root.mkdir(parents=True)
    (root / "local-0001").write_text("in the way")
    ctrl.start()
    (jid,) = ctrl.submit("alice", sh("echo fine"))
    failed = wait_until(lambda: plans(ctrl, state="failed"), 10, what="a failed plan")[0]
    assert failed["create"] == ["local-0001"] and "could not start a pilot" in failed["message"]
    assert failed["approved_by"] == "auto_apply"
    ep = endpoint(ctrl, "local")
    assert ep["state"] == "error" and f"plan {failed['id']} failed" in ep["message"]
    assert "retry in 5s" in ep["message"] and ep["retry_at"]
    assert machines(ctrl) == {"local-0001": "failed"}
    # after the back-off, the next plan starts another machine, and the job runs
    assert ctrl.wait_state(jid, "done", timeout=30)["machine"] == "local-0002"
    applied = plans(ctrl, state="applied")
    assert applied[-1]["create"] == ["local-0002"]
    assert applied[-1]["approved_by"] == "auto_apply"
    wait_until(lambda: endpoint(ctrl, "local")["state"] == "ok", 5, what="endpoint ok")
    assert "backing off" not in ctrl.log() and "Traceback" not in ctrl.log()


def test_down_removes_the_machines_until_up(make_controller, tmp_path):
    # isolation none: the payload marks its first run in the test's directory
    ctrl = make_controller(endpoints=[{**LOCAL, "max_machines": 1, "slots": 1,
                                       "isolation": "none"}])
    mark = tmp_path / "ran-once"
    (jid,) = ctrl.submit("alice", sh(f"if [ -e {mark} ]; then exit 0; fi; touch {mark}; "
                                     "exec sleep 30"))
    first = ctrl.wait_state(jid, "running", timeout=20)["machine"]
    r = cli(ctrl, "down", "local")
    assert r.returncode == 0 and "local: down" in r.stdout, r.stderr
    wait_until(lambda: machines(ctrl).get(first) == "stopped", 20, what="the machine stopped")
    j = ctrl.wait_state(jid, "waiting", timeout=10)  # interrupted: back in the queue
    assert j["retries"] == 0
    ep = wait_until(lambda: (e := endpoint(ctrl, "local"))["state"] == "down" and e, 15,
                    what="the endpoint down")  # once the plan's apply has returned
    assert ep["down_by"].startswith("admin token")
    assert ep["events"][0]["state"] == "down"
    down_plan = plans(ctrl, state="applied")[0]
    assert down_plan["delete"] == [first] and down_plan["asked_by"] == ep["down_by"]
    assert list(machines(ctrl)) == [first]  # waiting work starts nothing while down
    r = cli(ctrl, "up", "local")
    assert r.returncode == 0, r.stderr
    done = ctrl.wait_state(jid, "done", timeout=30)
    assert done["machine"] != first
    assert endpoint(ctrl, "local")["down_by"] is None


def test_plan_api_errors_are_clear(make_controller):
    ctrl = make_controller(endpoints=[LOCAL])
    with ctrl.client() as c:
        assert c.post("/api/v1/plans/999/approve").status_code == 404
        assert c.post("/api/v1/endpoints/nope/down").status_code == 404
        r = c.get("/api/v1/plans", params={"state": "bogus"})
        assert r.status_code == 422 and "state" in r.json()["detail"]
    with ctrl.client("alice") as c:
        assert c.get("/api/v1/plans").status_code == 200
        assert c.post("/api/v1/endpoints/local/down").status_code == 403
    with ctrl.client("pilot:local") as c:
        assert c.get("/api/v1/plans").status_code == 403


def test_a_cloud_endpoint_without_the_pulumi_cli(make_controller, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", path_without("pulumi"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "only-for-this-test")
    aws = {"name": "aws", "driver": "aws", "max_machines": 2,
           "aws": {"region": "eu-west-1", "ami": "ami-0abc", "spot": True,
                   "spot_max_price": 0.05}}
    ctrl = make_controller(endpoints=[aws, LOCAL], public_url="http://10.0.0.5:8080",
                           pulumi_root=str(tmp_path / "no-pulumi"))  # not `make pulumi`'s
    ctrl.submit("alice", sh("echo needs a machine", endpoints=["aws"]))
    ep = wait_until(lambda: (e := endpoint(ctrl, "aws"))["state"] == "error" and e, 10,
                    what="the aws endpoint's error")
    assert ep["message"].startswith("observe failed: " + missing_cli_message("aws"))
    assert "(attempt 1; retry in 5s)" in ep["message"]
    r = cli(ctrl, "endpoints")
    assert "aws (aws): error observe failed: the pulumi CLI is not installed" in r.stdout
    # nothing pretends an apply happened
    assert plans(ctrl, endpoint="aws") == [] and machines(ctrl) == {}
    # `up` asks for a retry now; the answer is the same clear line
    r = cli(ctrl, "up", "aws")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: ctrl.log().count(missing_cli_message("aws")) >= 2, 10,
               what="a second attempt")
    assert "Traceback" not in ctrl.log()
    with ctrl.client() as c:
        events = c.get("/api/v1/endpoints/aws/events").json()
    assert [e["state"] for e in events][:3] == ["error", "up", "error"]
    # `up` starts the back-off over (on a slow machine the automatic retry may have come first)
    assert "attempt 1" in events[0]["message"]
    assert re.search(r"attempt [12];", events[2]["message"]), events[2]
    assert endpoint(ctrl, "local")["state"] == "ok"  # the other endpoint carries on
    assert_no_secret_logged(ctrl, started_machines=False)
