"""A hostile payload, on the local endpoint and on an SSH host: it tries to read the pilot's
token and config and the controller's database, to write outside its directory through
planted symlinks, and to reuse what the metadata service hands out. Everything fails."""

from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LOCAL, PAYLOAD_PYTHON, sh
from tests.integration.test_ssh import PILOT, ssh_endpoint
from tests.sshhosts import SshHosts

pytestmark = [pytest.mark.integration, pytest.mark.ssh]

HOSTILE = r"""
import glob, json, os, re, urllib.error, urllib.request
out, env = {}, os.environ

def attempt(name, fn):
    try:
        out[name] = ["read", fn()]
    except Exception as e:
        out[name] = ["refused", type(e).__name__]

attempt("pilot_config", lambda: open(env["T_PILOT_CONFIG"]).read())
attempt("pilot_log", lambda: open(env["T_PILOT_LOG"]).read())
attempt("database", lambda: open(env["T_DB"], "rb").read(64).decode("latin-1"))
attempt("data_dir", lambda: os.listdir(env["T_DATA"]))
attempt("siblings", lambda: sorted(os.listdir("..")))
attempt("write_outside", lambda: open(env["T_VICTIM"] + "/x", "w").write("x"))
mine = env["CLOUDPILOT_JOB_TOKEN"].encode()
seen = []
for p in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        data = open(p, "rb").read()
    except OSError:
        continue
    seen += [t for t in re.findall(rb"cp_[A-Za-z0-9_-]{40,}", data) if t != mine]
out["tokens_in_proc"] = [t.decode(errors="replace") for t in seen]
me = int(env["CLOUDPILOT_JOB_ID"])
planted = []
for i in range(1, 4):
    try:
        os.symlink(env["T_VICTIM"], f"../job-{me + i}")
        planted.append(me + i)
    except OSError:
        pass
out["planted"] = planted
# what the metadata service hands out: the machine's user-data, with its bootstrap token
meta = json.loads(urllib.request.urlopen(env["T_META"], timeout=10).read())
def call(path, token, body):
    req = urllib.request.Request(env["CLOUDPILOT_URL"] + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
register = {"machine": meta["machine"], "cores": 1, "memory_mb": 64, "slots": 1}
out["register_with_bootstrap"] = call("/api/v1/pilots/register", meta["token"], register)
out["register_with_job_token"] = call("/api/v1/pilots/register", env["CLOUDPILOT_JOB_TOKEN"],
                                      register)
out["admin_with_job_token"] = call("/api/v1/admin/tokens", env["CLOUDPILOT_JOB_TOKEN"],
                                   {"role": "admin"})
print(json.dumps(out))
"""


class FakeMetadata:
    """A fake of the cloud metadata service (the real one exists only on a cloud machine):
    it serves one document, as http://169.254.169.254/latest/user-data would."""

    def __init__(self) -> None:
        self.doc = b"{}"
        meta = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(meta.doc)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str) -> str:
        return f"http://{host}:{self.server.server_address[1]}/latest/user-data"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp (which every sandbox replaces by its own), so that hiding the
    controller's files is what keeps them from a payload."""
    base = Path("/srv") if Path("/srv").is_dir() else Path("/var/lib")
    d = Path(tempfile.mkdtemp(prefix="cloudpilot-isolation-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    m = FakeMetadata()
    yield m
    m.close()


def run_hostile(ctrl, metadata: FakeMetadata, meta_host: str, pilot_dir, victim: Path,
                python: str, **req) -> dict:
    """Run the hostile payload; return what it found. `pilot_dir(machine)` is where the
    machine's pilot keeps its config and log."""
    env = {"T_DB": str(ctrl.database), "T_DATA": str(ctrl.root / "data"),
           "T_VICTIM": str(victim), "T_META": metadata.url(meta_host)}
    job = {"executable": python, "arguments": ["-c", HOSTILE], "env": env,
           "requirements": {"max_runtime": 60, **req}}
    (jid,) = ctrl.submit("alice", job)
    machine = ctrl.wait_state(jid, "running", "done", "failed", timeout=120)["machine"]
    # the machine's own config (its bootstrap token) is what its user-data held
    metadata.doc = (pilot_dir(machine) / "pilot.json").read_bytes()
    env.update(T_PILOT_CONFIG=str(pilot_dir(machine) / "pilot.json"),
               T_PILOT_LOG=str(pilot_dir(machine) / "pilot.log"))
    # the first job only finds the machine; the second one is the attack
    (jid,) = ctrl.submit("alice", {**job, "env": env})
    j = ctrl.wait_state(jid, "done", "failed", timeout=60)
    with ctrl.client("alice") as c:
        out = c.get(f"/api/v1/jobs/{jid}/output").json()
    assert j["state"] == "done", out
    found = json.loads(out["stdout"])
    # the next jobs run where they should, whatever was planted
    nxt = ctrl.submit("alice", {**sh("cat in.txt", **req),
                                "inputs": [{"name": "in.txt", "content": "mine"}]})
    for i in nxt:
        assert ctrl.wait_state(i, "done", "failed", timeout=60)["state"] == "done"
    assert list(victim.iterdir()) == []
    return found


def assert_nothing_gained(found: dict, bootstrap: str) -> None:
    assert found["pilot_config"][0] == "refused"
    assert found["pilot_log"][0] == "refused"
    assert found["database"][0] == "refused" or not found["database"][1].startswith("SQLite")
    assert found["data_dir"] in (["refused", "FileNotFoundError"], ["read", []])
    assert found["siblings"][0] == "read" and len(found["siblings"][1]) == 1  # its own dir
    assert found["write_outside"][0] == "refused"
    assert found["tokens_in_proc"] == []
    assert found["register_with_bootstrap"] == 401  # spent when its pilot registered
    assert found["register_with_job_token"] == 403
    assert found["admin_with_job_token"] == 403
    assert bootstrap.startswith("cp_")


def test_a_hostile_payload_on_the_local_endpoint_gains_nothing(outside_tmp, make_controller,
                                                               metadata):
    # outside_tmp first: it is removed after make_controller has ended the machines in it
    ctrl = make_controller(endpoints=[{**LOCAL, "max_machines": 1, "idle_timeout": 30}],
                           root=outside_tmp / "ctrl")
    victim = outside_tmp / "victim"
    victim.mkdir()
    machines = ctrl.root / "data-machines" / "local"
    found = run_hostile(ctrl, metadata, "127.0.0.1", lambda m: machines / m, victim,
                        PAYLOAD_PYTHON)
    (cfg,) = machines.glob("*/pilot.json")
    assert_nothing_gained(found, json.loads(cfg.read_text())["token"])


@pytest.fixture(scope="module")
def one_host(tmp_path_factory):
    hs = SshHosts(tmp_path_factory.mktemp("sshhosts"), 1)
    try:
        hs.setup()
        hs.start("h1")
        yield hs
    finally:
        hs.close()


def test_a_hostile_payload_on_an_ssh_host_gains_nothing(outside_tmp, make_controller,
                                                        metadata, one_host):
    ep = ssh_endpoint(one_host, names=("h1",))
    ctrl = make_controller(endpoints=[ep], host=one_host.controller_host,
                           root=outside_tmp / "ctrl")
    victim = outside_tmp / "victim"
    victim.mkdir()
    remote = Path(ep["ssh"]["remote_dir"])
    try:
        found = run_hostile(ctrl, metadata, one_host.controller_host, lambda m: remote / m,
                            victim, "/usr/bin/python3", memory_mb=256)
        cfg = json.loads((remote / "ssh-h1" / "pilot.json").read_text())
        assert_nothing_gained(found, cfg["token"])
    finally:
        one_host.kill_all_processes(PILOT)
