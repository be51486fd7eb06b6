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
