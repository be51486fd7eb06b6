"""A real Prometheus (Debian's package) scrapes the controller with examples/prometheus.yml
and a metrics token; its HTTP API's figures are checked against the database."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.auth import Role
from controller.store import Store
from tests.conftest import MANUAL, REPO, free_port, sh, wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.prometheus, pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian package prometheus missing (make test installs it)")]


def query(url: str, promql: str) -> dict[str, float]:
    r = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5)
    assert r.status_code == 200, r.text
    out = {}
    for res in r.json()["data"]["result"]:
        key = ",".join(f"{k}={v}" for k, v in sorted(res["metric"].items())
                       if k not in ("__name__", "instance", "job"))
        out[key] = float(res["value"][1])
    return out


def test_prometheus_scrapes_the_controller(make_controller: Any, tmp_path: Path) -> None:
    ctrl = make_controller(endpoints=[MANUAL])
    store = Store(ctrl.database)
    token = store.tokens.issue(Role.METRICS, note="prometheus")
    store.close()
    ids = ctrl.submit("alice", sh("echo a"), sh("exit 2"))
    ids += ctrl.submit("bob", sh("echo b"))
    ctrl.start_pilot("m1", slots=3)
    for i in ids:
        ctrl.wait_state(i, "done", "failed")

    # the documented scrape config, pointed at this controller
    (tmp_path / "token").write_text(token)
    cfg = yaml.safe_load((REPO / "examples" / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    job = cfg["scrape_configs"][0]
    job["scrape_interval"] = "1s"
    job["authorization"]["credentials_file"] = str(tmp_path / "token")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{ctrl.port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # the first sample is queryable a few seconds after the first scrape
        def sampled() -> bool:
            try:  # not listening yet, or still starting (503 until its storage is ready)
                if httpx.get(url + "/-/ready", timeout=5).status_code != 200:
                    return False
            except httpx.TransportError:
                return False
            return bool(query(url, "cloudpilot_jobs_submitted_total"))

        wait_until(sampled, 30, 0.5, "Prometheus to hold a sample")
        up = query(url, 'up{job="cloudpilot"}')
        assert list(up.values()) == [1.0]
        with sqlite3.connect(ctrl.database) as c:
            by_state = dict(c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                            .fetchall())
            matched = c.execute("SELECT COUNT(*) FROM job_events WHERE to_state = 'matched'"
                                ).fetchone()[0]
            by_owner = {f"owner={o},state={s}": n for o, s, n in c.execute(
                "SELECT owner, state, COUNT(*) FROM jobs GROUP BY owner, state")}
        assert query(url, "cloudpilot_jobs") == {f"state={s}": n for s, n in by_state.items()}
        assert by_state == {"done": 2, "failed": 1}
        assert query(url, "cloudpilot_jobs_by_owner") == by_owner
        assert query(url, "cloudpilot_jobs_submitted_total") == {"": 3.0}
        assert query(url, "cloudpilot_matches_total") == {"": float(matched)}
        assert query(url, 'cloudpilot_machines{endpoint="manual"}') == {
            "endpoint=manual,state=running": 1.0}
        assert query(url, "cloudpilot_pilots") == {"endpoint=manual": 1.0}
        # a histogram Prometheus can take quantiles of
        assert query(url, "cloudpilot_match_latency_seconds_count") == {"": float(matched)}
        q = query(url, "histogram_quantile(0.5, cloudpilot_match_latency_seconds_bucket)")
        assert 0 <= q[""] <= 60
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
