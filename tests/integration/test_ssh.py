"""SSH endpoints end to end: a real controller, real sshd hosts (network namespaces, or
127.0.0.x where namespaces are not permitted: tests/sshhosts.py), real ansible-runner runs and
real pilots on the hosts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from controller.config.settings import Settings
from controller.drivers.ansible import end_orphaned_runs
from controller.drivers.ssh import HostTarget, SshDriver, fingerprint
from tests.conftest import REPO, peaks, sh, wait_until
from tests.sshhosts import SshHosts

pytestmark = [pytest.mark.integration, pytest.mark.ssh]
PILOT = "pilot.pyz"  # what a pilot's command line holds on a host


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Four test hosts; h1-h3 up, h4 started by the test that has it appear."""
    hs = SshHosts(tmp_path_factory.mktemp("sshhosts"), 4)
    try:
        hs.setup()
        hs.start("h1", "h2", "h3")
        yield hs
    finally:
        hs.close()


@pytest.fixture(autouse=True)
def _nothing_left(hosts, tmp_path, make_controller):
    yield
    # before the test's controller stops (idle pilots in a long-poll would hold its shutdown
    # up), end its pilots on the hosts; after, any Ansible run it left
    hosts.kill_all_processes(PILOT)
    end_orphaned_runs(tmp_path)


def ssh_endpoint(hosts, name="ssh", names=("h1", "h2", "h3"), **over):
    ssh = {"user": hosts.user, "key": str(hosts.key), "remote_dir": str(hosts.root / "remote"),
           "known_hosts": str(hosts.known_hosts(hosts.root / f"known-{name}", *names)),
           "hosts": [{"name": h.name, "address": h.address, "port": h.port}
                     for h in hosts.hosts if h.name in names],
           "connect_timeout": 3, "stop_grace": 5, "retry_after": 1, "retry_max": 2}
    ssh.update(over.pop("ssh", {}))
    return {"name": name, "driver": "ssh", "cores": 2, "memory_mb": 2048, "slots": 2,
            "max_starts_per_cycle": 4, "idle_timeout": 30, "heartbeat_interval": 0.5,
            "lost_after": 3, "boot_timeout": 60, **over, "ssh": ssh}


def controller(make_controller, hosts, *endpoints):
    return make_controller(endpoints=list(endpoints), host=hosts.controller_host)


def get(ctrl, path, **params):
    with ctrl.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def machine(ctrl, name):
    return next((m for m in get(ctrl, "/api/v1/machines", all=True) if m["name"] == name),
                {"state": None})


def machine_events(ctrl, name):
    return get(ctrl, f"/api/v1/machines/{name}/events")


def cli(ctrl, *args):
    env = {"CLOUDPILOT_URL": ctrl.url, "CLOUDPILOT_TOKEN": ctrl.tokens["admin"], "PATH": "/usr/bin"}
    r = subprocess.run([sys.executable, "-m", "controller", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.timeout(240)  # about a minute; more on a busy machine
def test_three_hosts_with_two_slots_run_twelve_jobs_then_their_pilots_stop(
        make_controller, hosts):
    # idle_timeout: long enough for the redeploy below to find every pilot still running (a
    # stopped pilot's bootstrap token is spent: only the controller's next deploy brings a new one)
    ctrl = controller(make_controller, hosts, ssh_endpoint(hosts, idle_timeout=12))
    ids = ctrl.submit("alice", *[sh("sleep 1.5; echo on $(cat /proc/sys/kernel/hostname)",
                                    memory_mb=256)] * 12)
    with peaks(running=lambda: len(get(ctrl, "/api/v1/jobs", state="running", limit=100))) \
            as peak:
        done = [ctrl.wait_state(i, "done", "failed", timeout=150) for i in ids]
    assert [j["state"] for j in done] == ["done"] * 12
    assert peak["running"] == 6  # 3 hosts x 2 slots, and never more
    assert {j["machine"] for j in done} == {"ssh-h1", "ssh-h2", "ssh-h3"}

    # the same deploy again, as the controller ran it, changes nothing on any host
    settings = Settings.load(ctrl.config)
    ep = settings.endpoint("ssh")
    secrets = ctrl.root / "data" / "secrets" / "ssh"
    again = SshDriver(ep, settings.data_dir, settings.url,
                      lambda m: (secrets / f"{m}.pilot-token").read_text().strip(),
                      hide=settings.controller_paths())
    again.set_hosts(HostTarget(f"ssh-{h.name}", h.address, h.port, 2) for h in ep.ssh.hosts)
    redeploy = again._run("deploy-pilot.yml", again.hosts)
    assert redeploy.errors == {}
    assert redeploy.changed == {f"deploy-pilot.yml ssh-h{i}": 0 for i in (1, 2, 3)}

    # idle for idle_timeout: the controller stops each pilot, by name, with stop-pilot.yml
    # ([changed]; or [ok] when the pilot, told to drain at its heartbeat because its machine
    # is stopping, left before the playbook reached the host)
    stops = ("stop-pilot: [changed] Stop the pilot", "stop-pilot: [ok] Stop the pilot")

    def stopped(name):
        return any(e["reason"] in stops for e in machine_events(ctrl, name))

    wait_until(lambda: all(stopped(f"ssh-h{i}") for i in (1, 2, 3)), 90, 0.3,
               "idle pilots to be stopped")
    assert all(machine(ctrl, f"ssh-h{i}")["state"] == "stopped" for i in (1, 2, 3))
    assert all(not h.processes(PILOT) for h in hosts.hosts)
    ev = machine_events(ctrl, "ssh-h1")
    moves = [e["to_state"] for e in ev if e["from_state"] != e["to_state"]]
    assert moves == ["stopped", "requested", "booting", "running", "stopping", "stopped"]
    notes = [e["reason"] for e in ev if e["from_state"] == e["to_state"]]
    assert "deploy-pilot: [changed] Start the pilot" in notes
    assert set(stops) & set(notes)
    assert "idle for" in next(e["reason"] for e in ev if e["to_state"] == "stopping")
    # before it joined, h1 had no machine: its probe's tasks are events of the host
    assert any(e["event"] == "ansible" and e["detail"].startswith(
        "facts: [ok] Read cores, memory, Python")
        for e in get(ctrl, "/api/v1/endpoints/ssh/hosts/events", host="h1"))

    # what each host offers was recorded, and the operator sees it
    listed = {h["name"]: h for h in get(ctrl, "/api/v1/endpoints/ssh/hosts")}
    assert listed["h2"]["membership"] == "member"
    assert listed["h2"]["facts"]["cores"] >= 1 and listed["h2"]["facts"]["python"] >= "3.11"
    out = cli(ctrl, "hosts", "ssh")
    assert "h3" in out and "member" in out and "joined" in out

    # an SSH endpoint's ticks are recorded like any other's: explain and replay work
    out = cli(ctrl, "explain", "ssh")
    assert out.startswith("endpoint ssh: tick") and "machine ssh-h1 stopped" in out
    (tick,) = get(ctrl, "/api/v1/ticks", endpoint="ssh", changes="true", limit=1)
    assert "the same decision" in cli(ctrl, "replay", "--tick", str(tick["id"]))
    assert get(ctrl, "/api/v1/endpoints")[0]["state"] == "ok"


def test_a_host_that_dies_is_unreachable_and_its_jobs_run_elsewhere(make_controller, hosts):
    ctrl = controller(make_controller, hosts, ssh_endpoint(hosts))
    ids = ctrl.submit("alice", *[sh("sleep 5", memory_mb=256)] * 6)
    wait_until(lambda: len(get(ctrl, "/api/v1/jobs", state="running")) == 6, 40, 0.2,
               "6 jobs running")
    on_h2 = [j["id"] for j in get(ctrl, "/api/v1/jobs", state="running")
             if j["machine"] == "ssh-h2"]
    assert len(on_h2) == 2
    hosts.host("h2").crash(marker="/ssh-h2/")  # sshd, pilot and payloads die at once

    for jid in on_h2:
        j = ctrl.wait_state(jid, "done", timeout=90)
        assert j["machine"] in ("ssh-h1", "ssh-h3") and j["retries"] == 1
    assert all(ctrl.wait_state(i, "done", timeout=30) for i in ids)
    m = wait_until(lambda: (m := machine(ctrl, "ssh-h2"))["state"] == "unreachable" and m,
                   20, 0.3, "ssh-h2 to be unreachable")
    assert "Connection refused" in m["reason"]
    moves = [e["to_state"] for e in machine_events(ctrl, "ssh-h2")
             if e["from_state"] != e["to_state"]]
    assert moves[-2:] == ["lost", "unreachable"]
    # retried with back-off (1 s, then 2 s): each failure recorded
    wait_until(lambda: get(ctrl, "/api/v1/endpoints/ssh/hosts")[1]["failures"] >= 2, 20, 0.3,
               "a second retry")
    hosts.host("h2").start()  # it comes back: the next retry reaches it
    wait_until(lambda: machine(ctrl, "ssh-h2")["state"] == "stopped", 20, 0.3,
               "ssh-h2 reached again")
    events = get(ctrl, "/api/v1/endpoints/ssh/hosts/events", host="h2")
    assert any(e["event"] == "unreachable" and "Connection refused" in e["detail"]
               for e in events)


def test_an_unknown_host_key_is_refused_unless_trusted_on_first_use(make_controller, hosts):
    strict = ssh_endpoint(hosts, "strict", names=("h3",))
    strict["ssh"]["known_hosts"] = str(hosts.known_hosts(hosts.root / "known-none", "h1"))
    tofu = ssh_endpoint(hosts, "tofu", names=("h1",), ssh={"trust_on_first_use": True})
    del tofu["ssh"]["known_hosts"]
    ctrl = controller(make_controller, hosts, strict, tofu)

    h = wait_until(lambda: (h := get(ctrl, "/api/v1/endpoints/strict/hosts")[0])["failures"]
                   and h, 20, 0.3, "the strict endpoint to try h3")
    assert h["membership"] == "joining"  # never joined: no machine, no pilot, no job
    assert "Host key verification failed" in h["last_error"]
    assert h["machine_state"] is None

    t = wait_until(lambda: (t := get(ctrl, "/api/v1/endpoints/tofu/hosts")[0])["membership"]
                   == "member" and t, 20, 0.3, "h1 to join the tofu endpoint")
    assert t["facts"]["cores"] >= 1
    key = (hosts.host("h1").dir / "ssh_host_ed25519_key.pub").read_text().split()
    recorded = [e for e in get(ctrl, "/api/v1/endpoints/tofu/hosts/events")
                if e["event"] == "host key trusted on first use"]
    assert [e["detail"] for e in recorded] == [f"{key[0]} {fingerprint(key[1])}"]
    kept = (ctrl.root / "data" / "ssh" / "tofu" / "known_hosts").read_text()
    assert key[1] in kept


def test_a_failed_deploy_names_the_host_the_task_and_the_message(make_controller, hosts):
    broken = ssh_endpoint(hosts, "broken", names=("h2",), ssh={"remote_dir": "/dev/null/x"})
    ctrl = controller(make_controller, hosts, broken)
    (jid,) = ctrl.submit("alice", sh("true", endpoints=["broken"]))
    m = wait_until(lambda: (m := machine(ctrl, "broken-h2"))["state"] == "failed" and m, 30,
                   0.3, "the deploy to fail")
    task = "Inspect the host (Python, resources, the pilot's files and process)"
    assert m["reason"].startswith(f"deploy-pilot.yml: task '{task}' failed: ")
    assert "Not a directory" in m["reason"]
    notes = [e["reason"] for e in machine_events(ctrl, "broken-h2")]
    assert any(n.startswith(f"deploy-pilot: [failed] {task}: ") for n in notes)
    ep = next(e for e in get(ctrl, "/api/v1/endpoints") if e["name"] == "broken")
    assert ep["state"] == "error" and ep["message"].startswith("broken-h2: deploy-pilot.yml")
    assert ctrl.job(jid)["state"] == "waiting"  # not lost: it runs once a host can take it


def test_a_vm_joining_over_ssh_receives_work_and_leaves(make_controller, hosts):
    """The simple contextualization path: a VM comes up with the endpoint's key authorized;
    its cloud endpoint joins it to the paired SSH endpoint (here through the API), pinning the
    host key it read from the VM."""
    ep = ssh_endpoint(hosts, "cloud", names=())
    ctrl = controller(make_controller, hosts, ep)
    h4 = hosts.host("h4")
    with ctrl.client() as c:
        r = c.post("/api/v1/endpoints/cloud/hosts",
                   json={"name": "vm-1", "address": h4.address, "port": h4.port,
                         "host_key": h4.host_key_line})
        assert r.status_code == 201, r.text
        assert r.json()["membership"] == "joining"
        bad = c.post("/api/v1/endpoints/cloud/hosts", json={"name": "Bad Name!", "address": "x"})
        assert bad.status_code == 422
        assert c.post("/api/v1/endpoints/nope/hosts",
                      json={"name": "a", "address": "b"}).status_code == 404
        with ctrl.client("alice") as u:
            assert u.post("/api/v1/endpoints/cloud/hosts",
                          json={"name": "a", "address": "b"}).status_code == 403
    # not up yet: it does not answer, and is retried
    wait_until(lambda: get(ctrl, "/api/v1/endpoints/cloud/hosts")[0]["failures"], 20, 0.3,
               "a first attempt to reach vm-1")
    h4.start()  # the VM's sshd comes up
    wait_until(lambda: get(ctrl, "/api/v1/endpoints/cloud/hosts")[0]["membership"] == "member",
               20, 0.3, "vm-1 to join")
    ids = ctrl.submit("bob", *[sh("echo hello from the vm", memory_mb=256)] * 3)
    for jid in ids:
        j = ctrl.wait_state(jid, "done", timeout=90)
        assert j["machine"] == "cloud-vm-1"
    # an operator takes the endpoint down: its pilot stops, none starts until `up`
    cli(ctrl, "down", "cloud")
    wait_until(lambda: machine(ctrl, "cloud-vm-1")["state"] == "stopped", 20, 0.3,
               "the pilot to stop (down)")
    assert any(e["to_state"] == "stopping" and "the endpoint is down" in e["reason"]
               for e in machine_events(ctrl, "cloud-vm-1"))
    (late,) = ctrl.submit("bob", sh("echo after up", memory_mb=256))
    ctrl.wait_ticks("cloud")
    assert ctrl.job(late)["state"] == "waiting"
    cli(ctrl, "up", "cloud")
    assert ctrl.wait_state(late, "done", timeout=30)["machine"] == "cloud-vm-1"
    out = cli(ctrl, "hosts", "cloud", "leave", "vm-1")
    assert "left cloud" in out
    wait_until(lambda: machine(ctrl, "cloud-vm-1")["state"] == "stopped", 20, 0.3,
               "vm-1's pilot to stop")
    wait_until(lambda: not (ctrl.root / "data" / "secrets" / "cloud" /
                            "cloud-vm-1.pilot-token").exists(), 10, 0.3, "its token revoked")
    assert not h4.processes(PILOT)
    events = [e["event"] for e in get(ctrl, "/api/v1/endpoints/cloud/hosts/events")]
    for kind in ("joining", "unreachable", "facts", "joined", "left", "token revoked"):
        assert kind in events
    assert events.index("joined") < events.index("left")
    out = cli(ctrl, "hosts", "cloud")
    assert "vm-1" in out and "left" in out
    assert json.loads(json.dumps(get(ctrl, "/api/v1/endpoints/cloud/hosts")))[0][
        "membership"] == "left"
