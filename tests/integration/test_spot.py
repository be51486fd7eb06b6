"""Spot on a real controller with real pilots: an interruption notice from the instance
metadata service (a test HTTP server on 127.0.0.1) reschedules the running job without
using a retry; a priced endpoint starts machines by price, explains it, and a recorded tick
replays with another config."""

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from controller.reconcile.whatif import format_explain
from tests.conftest import REPO, sh, wait_until

pytestmark = pytest.mark.integration


class Metadata(BaseHTTPRequestHandler):
    """The two EC2 metadata paths the pilot uses (IMDSv2 token, spot instance-action)."""

    notice: ClassVar[dict | None] = None
    tokens_seen: ClassVar[list[str]] = []

    def do_PUT(self):
        body = b"test-token"
        self.send_response(200 if self.path == "/latest/api/token" else 404)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        Metadata.tokens_seen.append(self.headers.get("X-aws-ec2-metadata-token", ""))
        if self.path == "/latest/meta-data/spot/instance-action" and Metadata.notice:
            body = json.dumps(Metadata.notice).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    Metadata.notice = None
    Metadata.tokens_seen = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_interruption_notice_reschedules_without_failure(make_controller, metadata,
                                                            tmp_path):
    ctrl = make_controller()
    mark = tmp_path / "first"
    (jid,) = ctrl.submit("alice", sh(f"if [ -e {mark} ]; then echo second; exit 0; fi; "
                                     f"touch {mark}; exec sleep 30"))
    # isolation none: the payload marks its first run in the test's directory
    pilot = ctrl.start_pilot("spot-1", metadata_url=metadata, metadata_interval=0.2,
                             isolation="none")
    ctrl.wait_state(jid, "running")
    Metadata.notice = {"action": "terminate", "time": "2022-03-10T00:02:00Z"}
    j = ctrl.wait_state(jid, "waiting", timeout=20)
    assert j["retries"] == 0 and j["reschedules"] == 1  # not a failure
    events = ctrl.events(jid)
    resched = next(e for e in events if e["to_state"] == "rescheduled")
    assert "spot interruption notice: terminate at 2022-03-10T00:02:00Z" in resched["reason"]
    assert pilot.wait(15) == 0  # it stopped taking work and left
    assert "test-token" in Metadata.tokens_seen  # IMDSv2
    with ctrl.client() as c:
        spot1 = next(m for m in c.get("/api/v1/machines", params={"all": True}).json()
                     if m["name"] == "spot-1")
    assert spot1["state"] == "stopped" and "spot interruption" in spot1["reason"]
    ctrl.start_pilot("spot-2", isolation="none")
    j = ctrl.wait_state(jid, "done", timeout=20)
    assert j["retries"] == 0 and j["machine"] == "spot-2"


PRICE_ROWS = [  # 6-column layout, newest first; zone b is cheaper per core
    ("0.0300", "2022-03-10T00:00:00+00:00", "t.small", "eu-west-1a"),
    ("0.0200", "2022-03-10T00:00:00+00:00", "t.small", "eu-west-1b"),
]


def priced_toml(prices, max_machines=3, extra=""):
    """A priced endpoint (nested tables, which tests/conftest.py's writer does not do);
    `extra`: more of the endpoint's settings, as TOML lines."""
    return f"""
[[endpoints]]
name = "ec2"
driver = "local"
max_machines = {max_machines}
max_starts_per_cycle = 3
idle_timeout = 60
heartbeat_interval = 0.5
lost_after = 5
boot_timeout = 30
diversity = 0.0
{extra}
[endpoints.prices]
source = "file"
path = {json.dumps(str(prices))}
[[endpoints.machine_types]]
name = "t.small"
cores = 1
memory_mb = 1024
on_demand_price = 0.1
zones = ["eu-west-1a", "eu-west-1b"]
"""


def test_a_priced_endpoint_starts_where_cheapest_explains_and_replays(make_controller,
                                                                      tmp_path):
    prices = tmp_path / "prices.tsv"
    prices.write_text("".join(f"SPOTINSTANCEPRICE\t{p}\t{t}\t{ty}\tLinux/UNIX\t{z}\n"
                              for p, t, ty, z in PRICE_ROWS))
    ctrl = make_controller(endpoints=[{"name": "ec2"}], start=False)
    top = ctrl.config.read_text().split("\n[[endpoints]]")[0]
    ctrl.config.write_text(top + priced_toml(prices))
    ctrl.start()
    ids = ctrl.submit("alice", sh("sleep 1"), sh("sleep 1"))
    spot_off = ctrl.submit("alice", sh("echo od", spot=False))
    for jid in ids + spot_off:
        assert ctrl.wait_state(jid, "done", "failed", timeout=40)["state"] == "done"
    with ctrl.client() as c:
        ms = c.get("/api/v1/machines", params={"all": True}).json()
        info = {m["name"]: m["info"] for m in ms}
        assert ctrl.job(spot_off[0])["machine"] in {n for n, i in info.items()
                                                   if i["market"] == "on-demand"}
        assert any(i["pool"] == "t.small/eu-west-1b/spot" for i in info.values())
        assert all(i["pool"] != "t.small/eu-west-1a/spot" for i in info.values())
        ticks = c.get("/api/v1/ticks", params={"changes": True}).json()
        assert ticks
        first = min(t["id"] for t in ticks)
        r = c.get("/api/v1/endpoints/ec2/explain")
        assert r.status_code == 200
        doc = r.json()
        assert {x["pool"] for x in doc["candidates"]} == {
            f"t.small/eu-west-1{z}/{m}" for z in "ab" for m in ("spot", "on-demand")}
        assert c.get("/api/v1/endpoints/nope/explain").status_code == 404
        assert c.get("/api/v1/ticks/999999").status_code == 404
    env = {"CLOUDPILOT_URL": ctrl.url, "CLOUDPILOT_TOKEN": ctrl.tokens["admin"]}
    out = subprocess.run([sys.executable, "-m", "controller", "explain", "ec2"], cwd=REPO,
                         capture_output=True, text=True, timeout=30, env={**env, "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "candidates (cheapest per core first):" in out.stdout
    # what if max_machines had been 0?
    other = tmp_path / "other.toml"
    other.write_text(priced_toml(prices, max_machines=0))
    same = subprocess.run([sys.executable, "-m", "controller", "replay", "--tick", str(first)],
                          cwd=REPO, capture_output=True, text=True, timeout=30, env=env)
    assert same.returncode == 0, same.stderr
    assert "the same decision" in same.stdout
    what_if = subprocess.run([sys.executable, "-m", "controller", "replay", "--tick",
                              str(first), "--config", str(other)], cwd=REPO,
                             capture_output=True, text=True, timeout=30, env=env)
    assert what_if.returncode == 0, what_if.stderr
    assert "start t.small/eu-west-1b/spot: " in what_if.stdout and "-> 0" in what_if.stdout
    assert "capped by max_machines" in what_if.stdout


def test_a_sold_out_pool_is_blocked_the_next_cheapest_starts_and_the_block_ends(
        make_controller, tmp_path):
    """Issue 24 on a real controller: the local driver refuses the cheapest pool (its
    `refuse` setting, as EC2 says InsufficientInstanceCapacity) once; the offer is blocked
    (explain, the endpoints API, the metric), the next cheapest starts at the next tick
    without backing the endpoint off, and once the block ends the cheapest is used again."""
    prices = tmp_path / "prices.tsv"
    prices.write_text("".join(f"SPOTINSTANCEPRICE\t{p}\t{t}\t{ty}\tLinux/UNIX\t{z}\n"
                              for p, t, ty, z in PRICE_ROWS))
    ctrl = make_controller(endpoints=[{"name": "ec2"}], start=False)
    top = ctrl.config.read_text().split("\n[[endpoints]]")[0]
    cheapest = "t.small/eu-west-1b/spot"
    ctrl.config.write_text(top + priced_toml(prices, extra=(
        f'refusal_ttl = 6\nrefuse = {{ "{cheapest}" = 1 }}')))
    ctrl.start()
    (first,) = ctrl.submit("alice", sh("sleep 4"))
    job = ctrl.wait_state(first, "running", timeout=30)
    with ctrl.client() as c:
        info = {m["name"]: m for m in c.get("/api/v1/machines", params={"all": True}).json()}
        refused = [m for m in info.values() if m["state"] == "failed"]
        assert [m["info"]["pool"] for m in refused] == [cheapest]
        assert "InsufficientInstanceCapacity" in refused[0]["reason"]
        assert info[job["machine"]]["info"]["pool"] == "t.small/eu-west-1a/spot"
        (ep,) = c.get("/api/v1/endpoints").json()
        assert ep["retry_at"] is None  # not backed off
        (r,) = ep["refusals"]
        assert (r["pool"], r["kind"], r["failures"]) == (cheapest, "capacity", 1)
        metrics = c.get("/metrics").text
        assert f'cloudpilot_offer_blocked_seconds{{endpoint="ec2",kind="capacity",' \
               f'pool="{cheapest}"}}' in metrics
        ticks = c.get("/api/v1/ticks", params={"changes": True}).json()
    with httpx.Client(base_url=ctrl.url, timeout=30) as browser:  # the endpoints page
        browser.get("/login")
        browser.post("/login", data={"token": ctrl.tokens["admin"], "next": "/endpoints",
                                     "csrf": browser.cookies["cloudpilot_login"]})
        page = browser.get("/endpoints").text
        assert "Offers refused lately" in page and f'id="refusal-ec2-{cheapest}"' in page
    env = {"CLOUDPILOT_URL": ctrl.url, "CLOUDPILOT_TOKEN": ctrl.tokens["admin"]}
    out = subprocess.run([sys.executable, "-m", "controller", "explain", "ec2"], cwd=REPO,
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    if "offers the cloud refused lately" not in out.stdout:  # the block may have ended
        assert r["until"] < time.time() + 1, out.stdout
    # the tick that started the next cheapest replays to the same decision
    with ctrl.client() as c:
        docs = [c.get(f"/api/v1/ticks/{t['id']}").json() for t in ticks]
    (second,) = [d for d in docs if d["inputs"].get("refusals")
                 and d["decision"]["launches"]]
    assert second["decision"]["launches"][0]["pool"] == "t.small/eu-west-1a/spot"
    same = subprocess.run([sys.executable, "-m", "controller", "replay", "--tick",
                           str(second["id"])], cwd=REPO, capture_output=True, text=True,
                          timeout=30, env=env)
    assert same.returncode == 0, same.stderr
    assert "the same decision" in same.stdout
    # the block ends: two more jobs while the first runs: one new machine, in the cheapest
    # pool again, which is forgotten once it starts
    wait_until(lambda: time.time() > r["until"] + 0.5, 15, what="the block to end")
    more = ctrl.submit("alice", sh("sleep 1"), sh("sleep 1"))
    for jid in [first, *more]:
        assert ctrl.wait_state(jid, "done", "failed", timeout=40)["state"] == "done"
    with ctrl.client() as c:
        ms = c.get("/api/v1/machines", params={"all": True}).json()
        assert any(m["info"]["pool"] == cheapest and m["state"] != "failed" for m in ms)
        (ep,) = c.get("/api/v1/endpoints").json()
        assert ep["refusals"] == []


def test_the_ladder_with_spot_refused_falls_back_after_its_deadline_and_spot_only_waits(
        make_controller, tmp_path):
    """Issue 24's fallback ladder on a real controller with real pilots: the local driver
    refuses every spot launch (as EC2 says InsufficientInstanceCapacity). A job that has
    waited `fallback_after` for spot is placed on the on-demand rung, and explain says the
    rung and why; a spot-only job never goes on demand, not even on that machine when it is
    idle."""
    prices = tmp_path / "prices.tsv"
    prices.write_text("".join(f"SPOTINSTANCEPRICE\t{p}\t{t}\t{ty}\tLinux/UNIX\t{z}\n"
                              for p, t, ty, z in PRICE_ROWS))
    ctrl = make_controller(endpoints=[{"name": "ec2"}], start=False)
    top = ctrl.config.read_text().split("\n[[endpoints]]")[0]
    spot = ", ".join(f'"t.small/eu-west-1{z}/spot" = 0' for z in "ab")  # 0: always refused
    ctrl.config.write_text(top + priced_toml(prices, extra=(
        f"fallback_after = 3\nrefusal_ttl = 1\nrefuse = {{ {spot} }}")))
    ctrl.start()
    (only,) = ctrl.submit("alice", sh("echo spot", spot_only=True))
    (job,) = ctrl.submit("alice", sh("echo any"))
    submitted = ctrl.job(job)["created_at"]
    explained: list[dict] = []
    with ctrl.client() as c:
        def on_demand_started() -> bool:
            doc = c.get("/api/v1/endpoints/ec2/explain").json()
            if any(s["pool"].endswith("/on-demand") for s in doc["started"]):
                explained.append(doc)
            return bool(explained)

        wait_until(on_demand_started, 20, interval=0.05, what="an on-demand machine")
        done = ctrl.wait_state(job, "done", "failed", timeout=30)
        assert done["state"] == "done"
        ms = {m["name"]: m for m in c.get("/api/v1/machines", params={"all": True}).json()}
    # it ran on demand, and only once it had waited fallback_after for spot
    od = ms[done["machine"]]
    assert od["info"]["market"] == "on-demand"
    assert od["created_at"] >= submitted + 3
    refused = [m for m in ms.values() if m["info"]["market"] == "spot"]
    assert refused and all(m["state"] == "failed" and "InsufficientInstanceCapacity"
                           in m["reason"] for m in refused)
    # explain: the rung and why
    (start,) = [s for s in explained[0]["started"] if s["pool"].endswith("/on-demand")]
    assert "(rung 2 of 2, on-demand: its oldest job waited" in start["reason"]
    assert ">= fallback_after 3s)" in start["reason"]
    assert "rung 2 of 2, on-demand" in format_explain(explained[0])
    # the spot-only job waits, however long, though the on-demand machine is idle now
    time.sleep(2)
    assert ctrl.job(only)["state"] == "waiting"
    with ctrl.client() as c:
        ms = c.get("/api/v1/machines", params={"all": True}).json()
    assert any(m["info"]["market"] == "on-demand" and m["state"] == "running" for m in ms)
