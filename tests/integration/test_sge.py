"""A Grid Engine endpoint against a real Grid Engine cluster (tests/sgecluster.py: sge_qmaster
and sge_execd on a namespace host with its own host name that also runs sshd): the controller
reaches the login node over SSH, pilots are Grid Engine jobs, jobs run inside them. The same
scenarios as tests/integration/test_slurm.py."""

from __future__ import annotations

import json
import re

import pytest

from controller.config.settings import endpoint_config
from controller.domain.batch import BatchState
from controller.drivers.batchsite import SYSTEMS, BatchDriver
from controller.drivers.remote import Unreachable
from tests.conftest import peaks, sh, wait_until
from tests.integration.test_slurm import batch_endpoint, get, machines
from tests.integration.test_ssh import cli
from tests.sgecluster import SgeCluster

pytestmark = [pytest.mark.integration, pytest.mark.sge]
CPUS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SgeCluster(tmp_path_factory.mktemp("sge"), slots=CPUS)
    try:
        c.setup().start()
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def _empty_queue(cluster):
    yield
    cluster.cancel_all()


def sge_endpoint(cluster, **over):
    return batch_endpoint(cluster, "sge", **over)


def start(make_controller, cluster, **over):
    return make_controller(endpoints=[sge_endpoint(cluster, **over)],
                           host=cluster.hosts.controller_host)


def test_twelve_jobs_run_in_pilot_jobs_within_the_cluster_and_the_queue_empties(
        make_controller, cluster):
    ctrl = start(make_controller, cluster)
    ids = ctrl.submit("alice", *[sh("sleep 1; echo sge job $JOB_ID", memory_mb=128)] * 12)
    with peaks(0.3, running=lambda: len(get(ctrl, "/api/v1/jobs", state="running", limit=100)),
               pending=lambda: len(cluster.jobs("pending")),
               busy=cluster.busy_slots) as peak:
        done = [ctrl.wait_state(i, "done", "failed", timeout=90) for i in ids]
    assert [j["state"] for j in done] == ["done"] * 12
    assert 2 <= peak["running"] <= CPUS  # one core per pilot: never more than the cluster has
    assert 1 <= peak["pending"] <= 2  # the cluster was full, and max_queued held
    assert peak["busy"] <= CPUS
    ms = machines(ctrl)
    for j in done:
        m = ms[j["machine"]]
        out = get(ctrl, f"/api/v1/jobs/{j['id']}/output")["stdout"]
        assert out.strip() == f"sge job {m['info']['batch_job']}"  # inside its pilot job
    # a batch endpoint's ticks are recorded like any other's: explain and replay work
    out = cli(ctrl, "explain", "hpc")
    # (its inputs: the live machines, which the first ones may have left already)
    assert out.startswith("endpoint hpc: tick") and re.search(r"\d+ live machines", out), out
    (tick,) = get(ctrl, "/api/v1/ticks", endpoint="hpc", changes="true", limit=1)
    assert "the same decision" in cli(ctrl, "replay", "--tick", str(tick["id"]))
    events = get(ctrl, f"/api/v1/machines/{done[0]['machine']}/events")
    assert any(e["reason"].startswith("submitted as sge job ") for e in events)

    # idle pilots leave on their own; their Grid Engine jobs end; nothing is left queued
    wait_until(lambda: not cluster.jobs(), 40, what="the Grid Engine queue to empty")
    wait_until(lambda: all(m["state"] in ("stopped", "failed")
                           for m in machines(ctrl).values()), 20, what="machines to stop")
    assert {m["state"] for m in machines(ctrl).values()} == {"stopped"}
    ended = {j["id"]: j for j in cluster.ended()}
    assert all(ended[m["info"]["batch_job"]]["failed"] == "0"
               for m in machines(ctrl).values())  # each pilot job ended on its own


def test_a_pilot_job_cancelled_by_the_site_has_its_job_finished_elsewhere(
        make_controller, cluster):
    ctrl = start(make_controller, cluster)
    # long enough to be running still when the site deletes its pilot job
    [job_id] = ctrl.submit("alice", sh("sleep 10; echo finished", memory_mb=128))
    try:
        first = ctrl.wait_state(job_id, "running", timeout=40)
    except AssertionError:
        print(json.dumps(get(ctrl, "/api/v1/endpoints"), indent=1), ctrl.log())
        raise
    batch_id = machines(ctrl)[first["machine"]]["info"]["batch_job"]
    cluster.run("qdel", batch_id)  # the site takes the pilot job away

    job = ctrl.wait_state(job_id, "done", "failed", timeout=60)
    assert job["state"] == "done"
    assert job["machine"] != first["machine"]
    assert job["retries"] == 0  # interrupted, not failed: no retry used
    reasons = " | ".join(e["reason"] or "" for e in ctrl.events(job_id))
    assert "ended by the site" in reasons, reasons  # qdel kills: the pilot has no say
    gone = wait_until(lambda: (m := machines(ctrl)[first["machine"]])["state"]
                      in ("stopped", "lost") and m, 20, what="the cancelled pilot to be gone")
    assert batch_id in (gone["reason"] or "") or gone["state"] == "stopped"


def test_a_job_longer_than_h_rt_waits_with_that_reason_and_errors_are_grid_engines(
        make_controller, cluster):
    ctrl = start(make_controller, cluster, sge={"queue": "nosuchqueue"})
    [long_job] = ctrl.submit("alice", sh("true", max_runtime=3600, memory_mb=128))
    job = ctrl.job(long_job)
    assert job["state"] == "waiting"
    assert "needs 3600s of run time, hpc allows 580s" in job["waiting_reason"]
    ctrl.wait_ticks("hpc")
    assert not cluster.jobs()  # no pilot job for work that cannot run

    # a job that fits is tried; Grid Engine's own error is the endpoint's
    ctrl.submit("alice", sh("true", max_runtime=60, memory_mb=128))
    ep = wait_until(lambda: next((e for e in get(ctrl, "/api/v1/endpoints")
                                  if e["name"] == "hpc" and e["state"] == "error"), None),
                    30, what="the endpoint error")
    assert 'unknown queue "nosuchqueue"' in ep["message"], ep["message"]


def test_pilot_jobs_pending_too_long_are_cancelled_and_the_endpoint_backs_off(
        make_controller, cluster):
    ctrl = start(make_controller, cluster, sge={
        "qsub_options": ["-h"],  # the site's queue does not move
        "pending_timeout": 3, "pending_backoff": 60, "max_queued": 2})
    ctrl.submit("alice", *[sh("true", memory_mb=128)] * 3)
    wait_until(lambda: len(cluster.jobs("pending")) == 2, 20, what="two pilot jobs pending")
    assert len(cluster.jobs("pending")) == 2  # max_queued, though 3 jobs wait

    def backing_off():
        ep = get(ctrl, "/api/v1/endpoints")[0]
        reasons = " ".join((ep["last_decision"] or {}).get("reasons", []))
        return "none submitted for" in reasons and ep

    wait_until(backing_off, 20, what="the back-off")
    wait_until(lambda: not cluster.jobs("pending"), 20, what="the pending jobs cancelled")
    ms = wait_until(lambda: (ms := machines(ctrl)) and all(
        m["state"] == "stopped" for m in ms.values()) and ms, 20, what="machines stopped")
    assert len(ms) == 2
    assert all("pending in the batch system for" in (e["reason"] or "")
               for m in ms for e in get(ctrl, f"/api/v1/machines/{m}/events")
               if e["to_state"] == "stopping")
    ctrl.wait_ticks("hpc")
    assert not cluster.jobs() and len(machines(ctrl)) == 2  # held


def test_the_login_nodes_host_key_is_checked_and_secrets_stay_off_command_lines(
        cluster, tmp_path):
    ep = endpoint_config(**sge_endpoint(cluster))
    assert ep.sge is not None
    stranger = ep.model_copy(update={"sge": ep.sge.model_copy(
        update={"known_hosts": tmp_path / "empty_known_hosts"})})
    (tmp_path / "empty_known_hosts").write_text("")
    d = BatchDriver(stranger, tmp_path / "a", "http://127.0.0.1:9", lambda m: "secret-token",
                    SYSTEMS["sge"](stranger))
    with pytest.raises(Unreachable, match="Host key verification failed"):
        d.refresh()
    d.close()

    # a pilot of two cores asks for two slots of the parallel environment
    held = ep.model_copy(update={"cores": 2, "sge": ep.sge.model_copy(
        update={"qsub_options": ["-h"]})})
    d = BatchDriver(ep, tmp_path / "b", "http://127.0.0.1:9", lambda m: "secret-token-123",
                    SYSTEMS["sge"](held))
    try:
        [job_id] = d.submit(["hpc-0901"]).values()
        assert isinstance(job_id, str)
        cfg = cluster.root / "remote" / "hpc" / "hpc-0901" / "pilot.json"
        assert cfg.stat().st_mode & 0o777 == 0o600
        assert json.loads(cfg.read_text())["token"] == "secret-token-123"
        # the one SSH session's command lines, here and on the login node, hold no token
        ssh = d.shell.proc
        assert ssh is not None and ssh.poll() is None
        lines = [_cmdline(ssh.pid)] + [_cmdline(p) for p in cluster.login.processes()]
        assert all("secret-token" not in ln for ln in lines)
        assert d.refresh().jobs[job_id].state == BatchState.PENDING  # held
        assert [j["slots"] for j in cluster.jobs() if j["id"] == job_id] == ["2"]
        d.cancel([job_id])
    finally:
        d.close()
    assert ssh.poll() is not None  # the session's ssh ended with the driver


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""
