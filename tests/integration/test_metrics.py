"""GET /metrics parsed with prometheus_client's parser, checked against the database; who may
scrape; counters derived from the database survive a restart."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.auth import Role
from controller.store import Store
from tests.conftest import MANUAL, REPO, sh, wait_until


def scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def db(path: Any, sql: str, *args: Any) -> Any:
    with sqlite3.connect(path) as c:
        return c.execute(sql, args).fetchone()[0]


def test_metrics_match_the_database_and_survive_restart(make_controller: Any) -> None:
    ctrl = make_controller(endpoints=[MANUAL])
    store = Store(ctrl.database)
    metrics_token = store.tokens.issue(Role.METRICS, note="prometheus")
    store.close()
    ids = ctrl.submit("alice", sh("echo a"), sh("echo b"), sh("exit 3"))
    ids += ctrl.submit("bob", sh("echo c"))
    ctrl.start_pilot("m1", slots=2)
    for i in ids:
        ctrl.wait_state(i, "done", "failed")

    # who may scrape: an admin or a metrics token; nobody else
    assert httpx.get(ctrl.url + "/metrics").status_code == 401
    for who in ("alice", "pilot:manual"):
        r = httpx.get(ctrl.url + "/metrics",
                      headers={"Authorization": f"Bearer {ctrl.tokens[who]}"})
        assert r.status_code == 403, r.text
    assert "needs: admin, metrics" in r.json()["detail"]
    # ... and a metrics token opens nothing else
    r = httpx.get(ctrl.url + "/api/v1/jobs", headers={"Authorization": f"Bearer {metrics_token}"})
    assert r.status_code == 403

    m = scrape(ctrl.url, metrics_token)
    d = ctrl.database
    for state in ("done", "failed"):
        assert m[("cloudpilot_jobs", (("state", state),))] == db(
            d, "SELECT COUNT(*) FROM jobs WHERE state = ?", state)
    assert m[("cloudpilot_jobs", (("state", "done"),))] == 3
    assert m[("cloudpilot_jobs_by_owner", (("owner", "alice"), ("state", "failed")))] == 1
    assert m[("cloudpilot_jobs_by_owner", (("owner", "bob"), ("state", "done")))] == 1
    assert m[("cloudpilot_jobs_submitted_total", ())] == 4
    matches = db(d, "SELECT COUNT(*) FROM job_events WHERE to_state = 'matched'")
    assert matches >= 4
    assert m[("cloudpilot_matches_total", ())] == matches
    assert m[("cloudpilot_match_latency_seconds_count", ())] == matches
    assert m[("cloudpilot_match_latency_seconds_bucket", (("le", "+Inf"),))] == matches
    assert m[("cloudpilot_jobs_finished_total", (("state", "failed"),))] == 1
    assert m[("cloudpilot_machines", (("endpoint", "manual"), ("state", "running")))] == 1
    assert m[("cloudpilot_pilots", (("endpoint", "manual"),))] == 1
    assert m[("cloudpilot_plan_applies_total", (("endpoint", "manual"), ("outcome", "applied")))] \
        == db(d, "SELECT COUNT(*) FROM plans WHERE state = 'applied'")
    assert m[("cloudpilot_spend_usd_total", (("endpoint", "manual"),))] == 0.0
    assert ("cloudpilot_tick_duration_seconds_count", ()) in m
    # issue 25: accounting counters, failed attempts apart (1 core each; unpriced: USD 0)
    for owner, status in (("alice", "done"), ("alice", "failed"), ("bob", "done")):
        held = db(d, "SELECT SUM(a.ended_at - a.started_at) FROM attempts a JOIN jobs j"
                  " ON j.id = a.job_id WHERE j.owner = ? AND a.outcome = ?", owner, status)
        key = (("kind", "owner"), ("name", owner), ("status", status))
        assert m[("cloudpilot_usage_core_seconds_total", key)] == round(held, 3)
        assert m[("cloudpilot_usage_usd_total", key)] == 0.0
    # the admin token scrapes too
    assert scrape(ctrl.url, ctrl.tokens["admin"])[("cloudpilot_jobs_submitted_total", ())] == 4

    # a restart: the counters derived from the database come back whole
    ctrl.stop()
    ctrl.start()
    again = scrape(ctrl.url, metrics_token)
    for key in (("cloudpilot_jobs_submitted_total", ()), ("cloudpilot_matches_total", ()),
                ("cloudpilot_match_latency_seconds_count", ()),
                ("cloudpilot_jobs_finished_total", (("state", "done"),))):
        assert again[key] == m[key], key
    wait_until(lambda: scrape(ctrl.url, metrics_token).get(
        ("cloudpilot_tick_duration_seconds_count", ()), 0) > 0, what="a tick to be timed")

    # the README's table lists every metric, and the Grafana dashboard uses only these
    r = httpx.get(ctrl.url + "/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    families = {f.name for f in text_string_to_metric_families(r.text)
                if f.name.startswith("cloudpilot_")}
    documented = {n.removesuffix("_total") for n in re.findall(
        r"^\| `(cloudpilot_\w+)` \|", (REPO / "README.md").read_text(), re.M)}
    assert documented == families
    used = set(re.findall(r"cloudpilot_\w+", (REPO / "examples" / "grafana-dashboard.json")
                          .read_text()))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    assert {next((u.removesuffix(x) for x in suffixes if u.endswith(x)), u) for u in used} \
        <= families
