"""Accounting (issue 25) on the real controller and real local pilots: jobs of two owners run
on a priced local endpoint; the usage route's money per owner plus the idle money is what the
endpoint spent, and what `cloudpilot usage` prints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import LOCAL, REPO, sh, wait_until

pytestmark = pytest.mark.integration
PRICED = {**LOCAL, "cost_per_hour": 36.0}  # 1 cent a second: the sums are well above rounding


def test_usage_per_owner_plus_idle_is_the_spend(make_controller):
    ctrl = make_controller(endpoints=[PRICED])
    ids = (ctrl.submit("alice", sh("sleep 1"), sh("sleep 1"), sh("exit 3"))
           + ctrl.submit("bob", sh("sleep 1", cores=2)))
    for jid in ids:
        ctrl.wait_state(jid, "done", "failed", timeout=40)

    def machines_stopped() -> bool:
        with ctrl.client() as c:
            return c.get("/api/v1/machines").json() == []

    wait_until(machines_stopped, 30, what="idle machines to stop")
    with ctrl.client() as c:
        out = c.get("/api/v1/usage", params={"by": "owner", "since": "1d"}).json()
        spent_total = c.get("/api/v1/overview").json()["spent_total"]["local"]
        by_group = c.get("/api/v1/usage", params={"by": "group"}).json()
    rows = {r["name"]: r for r in out["rows"]}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"]["total"]["attempts"] == 3
    assert rows["alice"]["by_status"]["failed"]["attempts"] == 1
    assert 2 / 3600 <= rows["bob"]["total"]["core_hours"] < 20 / 3600  # 2 cores, 1 s+
    idle = sum(i["money"] for i in out["idle"])
    owners = sum(r["total"]["money"] for r in out["rows"])
    assert owners > 0 and idle > 0
    # per owner + idle == the endpoint's spend in the window == all it ever spent
    assert owners + idle == pytest.approx(out["spent"]["local"], abs=1e-5)
    assert out["spent"]["local"] == pytest.approx(spent_total, abs=1e-5)
    assert {r["name"] for r in by_group["rows"]} == {"physics", "biology"}
    assert sum(r["total"]["money"] for r in by_group["rows"]) == pytest.approx(owners, abs=1e-5)

    # a user sees only their own rows, and no other view
    with ctrl.client("bob") as c:
        mine = c.get("/api/v1/usage").json()
        assert [r["name"] for r in mine["rows"]] == ["bob"] and mine["idle"] == []
        refused = c.get("/api/v1/usage", params={"by": "group"})
        assert refused.status_code == 403 and "admin" in refused.text
        assert c.get("/api/v1/usage", params={"since": "soon"}).status_code == 422

    cli = subprocess.run(
        [sys.executable, "-m", "controller", "usage", "--by", "group", "--since", "30d",
         "--url", ctrl.url], cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, "CLOUDPILOT_TOKEN": ctrl.tokens["admin"]})
    assert cli.returncode == 0, cli.stderr
    assert "physics" in cli.stdout and "local (idle)" in cli.stdout
    assert "spent in the window: local" in cli.stdout


def test_a_group_over_its_budget_gets_no_new_machines(make_controller):
    # physics (alice) may spend 1 cent this month: its first job, 3 s on a machine costing
    # 1 cent a second, takes it over; that job is not stopped
    ctrl = make_controller(endpoints=[PRICED], group_budgets={"physics": 0.01},
                           budget_check_interval=0.1)
    [first] = ctrl.submit("alice", sh("sleep 3"))
    assert ctrl.wait_state(first, "done", "failed", timeout=40)["state"] == "done"

    def machines() -> list[dict]:
        with ctrl.client() as c:
            return list(c.get("/api/v1/machines").json())

    wait_until(lambda: machines() == [], 30, what="the idle machine to stop")
    [second] = ctrl.submit("alice", sh("true"))
    ctrl.wait_ticks("local", 3)
    job = ctrl.job(second)
    assert job["state"] == "waiting" and machines() == []
    assert "group physics has spent $0.0" in job["waiting_reason"]
    assert "budget for" in job["waiting_reason"] and "no new machines" in job["waiting_reason"]
    with ctrl.client("alice") as c:
        reasons = c.get("/api/v1/endpoints/local/explain").json()["reasons"]
    assert any(r.startswith("budget: group physics is over its budget") for r in reasons)
    # another group's work still starts machines (which may then take alice's job too)
    [bobs] = ctrl.submit("bob", sh("true"))
    assert ctrl.wait_state(bobs, "done", timeout=40)["state"] == "done"
