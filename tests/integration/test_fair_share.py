"""Fair share over time against a real controller: the test acts as a one-slot pilot that
finishes each job before asking again (so nobody holds anything when it asks)."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import MANUAL, REPO, sh
from tests.integration.test_api import register

pytestmark = pytest.mark.integration
# pilots played over HTTP never heartbeat: their machines must not be called lost (which
# revokes their credentials, issue 26) while a test runs
ONE_SLOT = {**MANUAL, "slots": 1, "lost_after": 600}


def run_one_at_a_time(ctrl, n):
    """A one-slot pilot: take a job, run it (50 ms), report it done; n times."""
    pilot = register(ctrl, machine="one-slot", slots=1)
    owners = []
    with ctrl.client(pilot) as c:
        for _ in range(n):
            r = c.post(f"/api/v1/pilots/{pilot}/match",
                       json={"free_cores": 1, "free_memory_mb": 1024, "free_slots": 1})
            assert r.status_code == 200, r.text
            job = r.json()["matches"][0]["job"]
            owners.append(job["owner"])
            time.sleep(0.05)
            r = c.post(f"/api/v1/pilots/{pilot}/jobs/{job['id']}/report",
                       json={"status": "done", "exit_code": 0})
            assert r.status_code == 200, r.text
    return owners


def test_a_small_user_is_served_beside_a_flood(make_controller):
    """alice's 1,000 jobs were queued first; bob's 10 still get turns (held-now fair share
    gave alice 20 of 20: with one slot, nobody holds anything when the pilot asks)."""
    ctrl = make_controller(endpoints=[ONE_SLOT])
    ctrl.submit("alice", *[sh("true")] * 1000)
    ctrl.submit("bob", *[sh("true")] * 10)
    owners = run_one_at_a_time(ctrl, 20)
    assert owners.count("bob") >= 7, owners
    assert owners.count("alice") >= 7, owners

    # what they used shows in `cloudpilot shares` and the API
    with ctrl.client("bob") as c:
        doc = c.get("/api/v1/shares").json()
    rows = {(r["kind"], r["name"]): r for r in doc["shares"]}
    assert doc["by"] == "owner" and doc["half_life"] == 86400
    for who in ("alice", "bob"):
        assert rows[("owner", who)]["usage_core_hours"] > 0
        assert rows[("owner", who)]["held_cores"] == 0
    assert rows[("owner", "carol")]["rank"] == 1  # unused: next in line
    env = dict(os.environ, CLOUDPILOT_URL=ctrl.url, CLOUDPILOT_TOKEN=ctrl.tokens["alice"])
    out = subprocess.run([sys.executable, "-m", "controller", "shares"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fair share by owner" in out.stdout
    lines = {ln.split()[1]: ln.split() for ln in out.stdout.splitlines()
             if ln.startswith("owner")}
    assert set(lines) == {"alice", "bob", "carol"} and lines["carol"][-1] == "1"


def test_owners_within_a_group_take_turns(make_controller):
    """Two levels: groups by their share, then owners within a group. carol shares the
    physics group with alice, whose 1,000 jobs are older; bob is alone in biology."""
    ctrl = make_controller(endpoints=[ONE_SLOT], fair_share_by="group",
                           group_shares={"physics": 1, "biology": 1})
    ctrl.submit("alice", *[sh("true")] * 1000)
    ctrl.submit("carol", *[sh("true")] * 10)
    ctrl.submit("bob", *[sh("true")] * 10)
    owners = run_one_at_a_time(ctrl, 20)
    assert owners.count("bob") >= 7, owners  # biology: about half
    assert owners.count("carol") >= 3, owners  # half of physics' half
    assert owners.count("alice") >= 3, owners
    with ctrl.client("carol") as c:
        doc = c.get("/api/v1/shares").json()
    groups = {r["name"]: r for r in doc["shares"] if r["kind"] == "group"}
    assert set(groups) == {"physics", "biology"}
    assert all(g["usage_core_hours"] > 0 for g in groups.values())
