"""A Slurm endpoint against a real Slurm cluster (tests/slurmcluster.py: munged, slurmctld and
slurmd on a namespace host that also runs sshd): the controller reaches the login node over
SSH, pilots are Slurm jobs, jobs run inside them."""

from __future__ import annotations

import json
import re

import pytest

from controller.config.settings import endpoint_config
from controller.domain.batch import BatchState
from controller.drivers.batchsite import SYSTEMS, BatchDriver
from controller.drivers.remote import Unreachable
from tests.conftest import peaks, sh, wait_until
from tests.integration.test_ssh import cli
from tests.slurmcluster import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
CPUS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=CPUS)
    try:
        c.setup().start()
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def _empty_queue(cluster):
    yield
    cluster.cancel_all()


def batch_endpoint(cluster, driver, site=None, **over):
    """A batch endpoint of `driver` on the test cluster's login node (`site`: the driver's
    own settings; `over[driver]` overrides them, the rest of `over` the endpoint's)."""
    hosts, login = cluster.hosts, cluster.login
    conf = {"address": login.address, "port": login.port, "user": hosts.user,
            "key": str(hosts.key), "known_hosts": str(hosts.known_hosts(hosts.root / "known")),
            "remote_dir": str(cluster.root / "remote"), "python": "/usr/bin/python3",
            "wall_time": 600, "time_margin": 20, "max_queued": 2,
            "pending_timeout": 120, "connect_timeout": 5, **(site or {}),
            **over.pop(driver, {})}
    return {"name": "hpc", "driver": driver, "cores": 1, "memory_mb": 256, "slots": 1,
            "max_machines": 8, "max_starts_per_cycle": 8, "idle_timeout": 3,
            "heartbeat_interval": 0.5, "lost_after": 10, "boot_timeout": 60, **over,
            driver: conf}


def slurm_endpoint(cluster, **over):
    return batch_endpoint(cluster, "slurm", {"partition": "batch"}, **over)


def start(make_controller, cluster, **over):
    return make_controller(endpoints=[slurm_endpoint(cluster, **over)],
                           host=cluster.hosts.controller_host)


def get(ctrl, path, **params):
    with ctrl.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def machines(ctrl):
    """Machines by name, each with its info as a dict (the API gives JSON text or an object)."""
    return {m["name"]: dict(m, info=json.loads(m["info"] or "{}")
                            if isinstance(m["info"], str) or m["info"] is None else m["info"])
            for m in get(ctrl, "/api/v1/machines", all=True)}


def test_twelve_jobs_run_in_pilot_jobs_within_the_cluster_and_the_queue_empties(
        make_controller, cluster):
    ctrl = start(make_controller, cluster)
    ids = ctrl.submit("alice", *[sh("sleep 1; echo slurm job $SLURM_JOB_ID", memory_mb=128)]
                      * 12)
    with peaks(running=lambda: len(get(ctrl, "/api/v1/jobs", state="running", limit=100)),
               pending=lambda: len(cluster.jobs("PENDING"))) as peak:
        done = [ctrl.wait_state(i, "done", "failed", timeout=90) for i in ids]
    assert [j["state"] for j in done] == ["done"] * 12
    assert 2 <= peak["running"] <= CPUS  # one core per pilot: never more than the cluster has
    assert 1 <= peak["pending"] <= 2  # the cluster was full, and max_queued held
    ms = machines(ctrl)
    for j in done:
        m = ms[j["machine"]]
        out = get(ctrl, f"/api/v1/jobs/{j['id']}/output")["stdout"]
        assert out.strip() == f"slurm job {m['info']['batch_job']}"  # inside its pilot job
    # a batch endpoint's ticks are recorded like any other's: explain and replay work
    out = cli(ctrl, "explain", "hpc")
    # (its inputs: the live machines, which the first ones may have left already)
    assert out.startswith("endpoint hpc: tick") and re.search(r"\d+ live machines", out), out
    (tick,) = get(ctrl, "/api/v1/ticks", endpoint="hpc", changes="true", limit=1)
    assert "the same decision" in cli(ctrl, "replay", "--tick", str(tick["id"]))
    events = get(ctrl, f"/api/v1/machines/{done[0]['machine']}/events")
    assert any(e["reason"].startswith("submitted as slurm job ") for e in events)

    # idle pilots leave on their own; their Slurm jobs end; nothing is left in the queue
    wait_until(lambda: not cluster.jobs("PENDING", "RUNNING", "COMPLETING"), 40,
               what="the Slurm queue to empty")
    wait_until(lambda: all(m["state"] in ("stopped", "failed")
                           for m in machines(ctrl).values()), 20, what="machines to stop")
    assert {m["state"] for m in machines(ctrl).values()} == {"stopped"}
    assert "COMPLETED" in {j["state"] for j in cluster.jobs()}


def test_a_pilot_job_cancelled_by_the_site_has_its_job_finished_elsewhere(
        make_controller, cluster):
    ctrl = start(make_controller, cluster)
    # long enough to be running still when the site cancels its pilot job
    [job_id] = ctrl.submit("alice", sh("sleep 10; echo finished", memory_mb=128))
    try:
        first = ctrl.wait_state(job_id, "running", timeout=40)
    except AssertionError:
        print(json.dumps(get(ctrl, "/api/v1/endpoints"), indent=1), ctrl.log())
        raise
    batch_id = machines(ctrl)[first["machine"]]["info"]["batch_job"]
    cluster.run("scancel", batch_id)  # the site takes the pilot job away

    job = ctrl.wait_state(job_id, "done", "failed", timeout=60)
    assert job["state"] == "done"
    assert job["machine"] != first["machine"]
    assert job["retries"] == 0  # interrupted, not failed: no retry used
    reasons = " | ".join(e["reason"] or "" for e in ctrl.events(job_id))
    assert "SIGTERM" in reasons or "ended by the site" in reasons, reasons
    gone = wait_until(lambda: (m := machines(ctrl)[first["machine"]])["state"]
                      in ("stopped", "lost") and m, 20, what="the cancelled pilot to be gone")
    assert batch_id in (gone["reason"] or "") or gone["state"] == "stopped"


def test_a_job_longer_than_the_wall_time_waits_with_that_reason_and_errors_are_slurms(
        make_controller, cluster):
    ctrl = start(make_controller, cluster, slurm={"partition": "nosuchpartition"})
    [long_job] = ctrl.submit("alice", sh("true", max_runtime=3600, memory_mb=128))
    job = ctrl.job(long_job)
    assert job["state"] == "waiting"
    assert "needs 3600s of run time, hpc allows 580s" in job["waiting_reason"]
    ctrl.wait_ticks("hpc")
    assert not cluster.jobs("PENDING", "RUNNING")  # no pilot job for work that cannot run

    # a job that fits is tried; Slurm's own error is the endpoint's
    ctrl.submit("alice", sh("true", max_runtime=60, memory_mb=128))
    ep = wait_until(lambda: next((e for e in get(ctrl, "/api/v1/endpoints")
                                  if e["name"] == "hpc" and e["state"] == "error"), None),
                    30, what="the endpoint error")
    assert "invalid partition specified: nosuchpartition" in ep["message"]


def test_pilot_jobs_pending_too_long_are_cancelled_and_the_endpoint_backs_off(
        make_controller, cluster):
    ctrl = start(make_controller, cluster, slurm={
        "sbatch_options": ["--hold"],  # the site's queue does not move
        "pending_timeout": 3, "pending_backoff": 60, "max_queued": 2})
    ctrl.submit("alice", *[sh("true", memory_mb=128)] * 3)
    wait_until(lambda: len(cluster.jobs("PENDING")) == 2, 20, what="two pilot jobs pending")
    assert len(cluster.jobs("PENDING")) == 2  # max_queued, though 3 jobs wait

    def backing_off():
        ep = get(ctrl, "/api/v1/endpoints")[0]
        reasons = " ".join((ep["last_decision"] or {}).get("reasons", []))
        return "none submitted for" in reasons and ep

    wait_until(backing_off, 20, what="the back-off")
    wait_until(lambda: not cluster.jobs("PENDING"), 20, what="the pending jobs cancelled")
    ms = wait_until(lambda: (ms := machines(ctrl)) and all(
        m["state"] == "stopped" for m in ms.values()) and ms, 20, what="machines stopped")
    assert len(ms) == 2
    assert all("pending in the batch system for" in (e["reason"] or "")
               for m in ms for e in get(ctrl, f"/api/v1/machines/{m}/events")
               if e["to_state"] == "stopping")
    ctrl.wait_ticks("hpc")
    assert not cluster.jobs("PENDING", "RUNNING") and len(machines(ctrl)) == 2  # held


def test_the_login_nodes_host_key_is_checked_and_secrets_stay_off_command_lines(
        cluster, tmp_path):
    ep = endpoint_config(**slurm_endpoint(cluster))
    assert ep.slurm is not None
    stranger = ep.model_copy(update={"slurm": ep.slurm.model_copy(
        update={"known_hosts": tmp_path / "empty_known_hosts"})})
    (tmp_path / "empty_known_hosts").write_text("")
    d = BatchDriver(stranger, tmp_path / "a", "http://127.0.0.1:9", lambda m: "secret-token",
                    SYSTEMS["slurm"](stranger))
    with pytest.raises(Unreachable, match="Host key verification failed"):
        d.refresh()
    d.close()

    d = BatchDriver(ep, tmp_path / "b", "http://127.0.0.1:9", lambda m: "secret-token-123",
                    SYSTEMS["slurm"](ep.model_copy(update={"slurm": ep.slurm.model_copy(
                        update={"sbatch_options": ["--hold"]})})))
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
