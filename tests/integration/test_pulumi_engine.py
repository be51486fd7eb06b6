"""The real Pulumi engine (built by `make pulumi`; `make test` builds it) driving stacks/local:
each machine a pilot process on this host, declared as a Pulumi dynamic resource.

- Through a controller: preview (Pulumi's saved plan) -> approve -> `up --plan` -> the pilot
  registers and runs the job -> scale down through a second plan (a destroy) -> no machine
  left; the bootstrap token is in no state file and no stored plan in clear.
- Through the driver, on one stack shared by the module's tests: a stale plan refused, a
  create that fails, a stack locked by a live update, an `up` killed midway recovered (no
  machine started twice), an update cancelled through the engine (apply_timeout), drift
  found by a refreshing preview, a token renewed between a preview and its `up`, a
  missing or wrong passphrase in one line.

Each engine command costs seconds (a preview ~8 s, an up ~15 s on a loaded machine): the
driver tests share one stack and do as few commands as they can."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config.settings import endpoint_config
from controller.drivers.local import PilotProcesses
from controller.drivers.pulumi import (
    BUILT_ROOT,
    PulumiDriver,
    StackLocked,
    StalePlan,
)
from controller.errors import DriverSetupError
from controller.services.secrets import bootstrap_token, token_path
from controller.store import Store
from tests.conftest import LOCAL, sh, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.pulumi,
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("pulumi") is None and not (BUILT_ROOT / "bin/pulumi").exists(),
                       reason="the Pulumi engine is not built: run `make pulumi` "
                              "(`make test` builds it)"),
]

PASSPHRASE = "engine-test-passphrase"


def plans(ctrl: Any, **params: Any) -> list[dict[str, Any]]:
    with ctrl.client() as c:
        r = c.get("/api/v1/plans", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def approve(ctrl: Any, plan_id: int) -> None:
    with ctrl.client() as c:
        r = c.post(f"/api/v1/plans/{plan_id}/approve")
    assert r.status_code == 200, r.text


def machines(ctrl: Any) -> dict[str, str]:
    with ctrl.client() as c:
        return {m["name"]: m["state"] for m in
                c.get("/api/v1/machines", params={"all": True}).json()}


def test_preview_approve_up_plan_scale_down(make_controller, monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    ep = {**LOCAL, "name": "lp", "via": "pulumi", "auto_apply": False, "slots": 1,
          "max_machines": 1, "idle_timeout": 1}
    ctrl = make_controller(endpoints=[ep])
    (job,) = ctrl.submit("alice", sh("echo through the engine"))
    p1 = wait_until(lambda: plans(ctrl, state="pending"), 60, interval=0.5,
                    what="a pending plan (a preview)")[0]
    assert p1["create"] == ["lp-0001"] and p1["engine_plan"] is True
    assert "pulumi-python:dynamic/cloudpilot:LocalMachine lp-0001" in p1["detail"]
    assert p1["detail"].startswith("preview of stack lp: 2 to create")  # the stack, the machine
    assert machines(ctrl) == {}  # nothing happens before the approval

    approve(ctrl, p1["id"])
    assert ctrl.wait_state(job, "done", "failed", timeout=90)["state"] == "done"
    # (the pilot may run the job before `up` has returned)
    wait_until(lambda: [p["id"] for p in plans(ctrl, state="applied")] == [p1["id"]], 30,
               interval=0.5, what="the plan applied")
    state_file = next((ctrl.root / "data" / "pulumi" / "state").rglob("stacks/**/lp.json"))
    tokens = [p.read_text().strip()
              for p in (ctrl.root / "data" / "secrets").glob("*/*.pilot-token")]
    assert tokens
    with sqlite3.connect(ctrl.database) as db:
        (engine_plan,) = db.execute("SELECT engine_plan FROM plans WHERE id = ?",
                                    (p1["id"],)).fetchone()
    assert "lp-0001" in engine_plan and "ciphertext" in engine_plan
    for t in tokens:  # the pilot's config is a secret: encrypted in the state and the plan
        assert t not in state_file.read_text() and t not in engine_plan

    # idle: the scheduler wants it gone; the second plan deletes it (a destroy)
    p2 = wait_until(lambda: plans(ctrl, state="pending"), 60, interval=0.5,
                    what="a plan that deletes the idle machine")[0]
    assert p2["delete"] == ["lp-0001"] and "to delete" in p2["detail"]
    pid = int((ctrl.root / "data-machines" / "lp" / "lp-0001" / "pilot.pid").read_text())
    approve(ctrl, p2["id"])
    wait_until(lambda: machines(ctrl).get("lp-0001") == "stopped", 60, interval=0.5,
               what="the machine stopped")
    wait_until(lambda: not Path(f"/proc/{pid}").exists()
               or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 10,
               what="its pilot process gone")
    wait_until(lambda: plans(ctrl, state="applied")[0]["id"] == p2["id"], 60, interval=0.5,
               what="the second plan applied")
    state = json.loads(state_file.read_text())
    assert not [r for r in state["checkpoint"]["latest"].get("resources") or []
                if r["type"].endswith("LocalMachine")]


# the driver on one shared stack ---------------------------------------------------------------
class Engine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = Store(root / "cloudpilot.db")
        self.ep = endpoint_config(name="eng", driver="local", via="pulumi")
        self.driver = self.make()

    def make(self) -> PulumiDriver:
        def token_for(machine: str) -> str:
            return bootstrap_token(self.store, self.root / "data", "eng", machine)

        # no controller listens there: the pilots keep trying to register, which is enough
        return PulumiDriver(self.ep, self.root / "data", "http://127.0.0.1:9", token_for,
                            machines_dir=self.root / "machines")

    @property
    def procs(self) -> PilotProcesses:
        return PilotProcesses(self.root / "machines" / "eng")

    def pilots(self) -> dict[str, int | None]:
        return {d.name: self.procs.running(d.name)
                for d in sorted((self.root / "machines" / "eng").iterdir())}

    def in_state(self) -> set[str]:
        dep = self.driver.stack().export_stack().deployment
        return {r["urn"].rsplit("::", 1)[-1] for r in dep.get("resources", [])
                if r["type"].endswith("LocalMachine")}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
        e = Engine(tmp_path_factory.mktemp("engine"))
        yield e
        procs = e.procs
        procs.stop([d.name for d in (e.root / "machines" / "eng").iterdir()])
        e.store.close()


def test_stale_plan_is_refused(engine):
    d = engine.driver
    first = d.plan([], ["eng-0001"])
    assert first.engine_plan and first.create == ("eng-0001",)
    other = d.plan([], ["eng-0002"])
    result = d.apply(other)  # the world moves on: eng-0002 exists now
    assert result.created == ("eng-0002",) and not result.errors
    assert engine.in_state() == {"eng-0002"}
    with pytest.raises(StalePlan, match=r"^stale plan: stack eng changed since its preview"):
        d.apply(first)
    assert engine.in_state() == {"eng-0002"}  # nothing of the stale plan happened
    assert engine.pilots()["eng-0002"] is not None and "eng-0001" not in engine.pilots()


def test_a_create_that_fails_is_the_machines_error(engine):
    d = engine.driver
    blocker = engine.root / "machines" / "eng" / "eng-0009"
    blocker.write_text("a file where the machine's directory goes")
    try:
        result = d.apply(d.plan(["eng-0002"], ["eng-0002", "eng-0009"]))
    finally:
        blocker.unlink()
    assert result.created == () and set(result.errors) == {"eng-0009"}, result
    assert "File exists" in result.errors["eng-0009"] and "\n" not in result.errors["eng-0009"]
    assert engine.in_state() == {"eng-0002"}  # the state read back after the failure


def test_locked_stack_fails_clearly_and_changes_nothing(engine):
    d = engine.driver
    locks = engine.root / "data" / "pulumi" / "state" / ".pulumi" / "locks" / "organization" \
        / "cloudpilot" / "eng"
    locks.mkdir(parents=True, exist_ok=True)
    lock = locks / "held.json"
    lock.write_text(json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                                "timestamp": "2026-12-07T00:00:00Z"}))
    try:
        with pytest.raises(StackLocked, match=rf"locked by another update \(pid {os.getpid()}"):
            d.plan(["eng-0002"], ["eng-0002", "eng-0003"])
    finally:
        lock.unlink()
    assert engine.in_state() == {"eng-0002"}


def test_killed_up_is_recovered_without_starting_a_machine_twice(engine):
    d = engine.driver
    diff = d.plan(["eng-0002"], ["eng-0002", "eng-0003"])
    done: dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.setdefault("r", _try(d.apply, diff)))
    t.start()
    # kill the engine as soon as the machine's pilot runs (its create has not been saved)
    wait_until(lambda: engine.procs.running("eng-0003") is not None, 60, interval=0.05,
               what="eng-0003's pilot started by the update")
    engines = _engine_pids(d)
    assert engines
    plugins = _plugin_pids(engines)  # the provider's process: it dies with no engine too
    for pid in engines + plugins:
        os.kill(pid, signal.SIGKILL)
    t.join(60)
    first_pid = engine.procs.running("eng-0003")
    assert first_pid is not None
    # the next apply clears the dead engine's lock and pending operation, and adopts the pilot
    result = engine.make().apply(diff)
    assert result.created == ("eng-0003",) and not result.errors, result
    assert engine.in_state() == {"eng-0002", "eng-0003"}
    assert engine.procs.running("eng-0003") == first_pid  # the same process: not started twice
    assert _pilot_count(engine, "eng-0003") == 1


def test_pending_operations_are_cleared_and_the_stack_refreshed(engine, caplog):
    """What a killed engine leaves when it dies between a create and its save (the test above
    may kill it a little later): a pending operation in the state."""
    d = engine.driver
    stack = d.stack()
    # written into the file backend's checkpoint (`stack import` would drop it)
    path = engine.root / "data/pulumi/state/.pulumi/stacks/cloudpilot/eng.json"
    doc = json.loads(path.read_text())
    latest = doc["checkpoint"]["latest"]
    res = next(r for r in latest["resources"] if r["urn"].endswith("::eng-0003"))
    latest["pending_operations"] = [{"resource": res, "type": "creating"}]
    path.write_text(json.dumps(doc))
    assert stack.export_stack().deployment["pending_operations"]
    with caplog.at_level("WARNING", logger="cloudpilot.pulumi"):
        d.recover()
    assert "clearing 1 pending operations of a killed update (creating eng-0003)" in caplog.text
    assert not stack.export_stack().deployment.get("pending_operations")
    assert engine.in_state() == {"eng-0002", "eng-0003"}  # refreshed: both still run


def test_refresh_finds_a_machine_gone_behind_the_controllers_back(engine):
    d = engine.driver
    engine.procs.stop(["eng-0003"])  # gone, not through the stack
    found = d.drift()
    assert found is not None and "eng-0003" in found
    d.refresh()
    assert {m.name: m.alive for m in d.observe() or ()} == {"eng-0002": True,
                                                            "eng-0003": False}


def test_apply_timeout_cancels_the_update_through_the_engine(engine):
    d = engine.driver
    diff = d.plan(["eng-0002", "eng-0003"], ["eng-0002"])
    done: dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.setdefault("r", _try(d.apply, diff)))
    t.start()
    wait_until(lambda: _engine_pids(d, b"up") and d._lock_files(), 30, interval=0.02,
               what="the engine running up (the stack locked)")
    assert d.cancel()
    t.join(90)
    assert not t.is_alive()
    r = done["r"]
    assert r.errors == {"eng-0003": "the update was cancelled through the engine (it ran "
                                    "past apply_timeout)"}, r
    assert not d._lock_files()  # the engine unlocked the stack as it stopped
    d.refresh()


def test_a_token_renewed_between_preview_and_up_leaves_the_plan_valid(engine):
    """A pilot registering between a preview and its `up` spends its bootstrap token (the
    next one is new): machines that exist are declared without theirs, so the saved plan
    still holds."""
    d = engine.driver
    d.refresh()
    current = [m.name for m in d.observe() or ()]
    diff = d.plan(current, [*current, "eng-0005"])
    assert diff.engine_plan
    for name in current:
        token_path(engine.root / "data", "eng", name).unlink(missing_ok=True)
    result = d.apply(diff)
    assert result.created == ("eng-0005",) and not result.errors, result


def test_passphrase_missing_or_wrong_is_one_clear_line(engine, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    with pytest.raises(DriverSetupError, match="set PULUMI_CONFIG_PASSPHRASE"):
        engine.make().stack()
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "wrong")
    with pytest.raises(Exception) as e:
        engine.make().plan(["eng-0002"], [])
    msg = str(e.value)
    assert "\n" not in msg and "passphrase" in msg.lower(), msg


def test_destroy_leaves_nothing(engine):
    d = engine.make()
    d.refresh()
    current = [m.name for m in d.observe() or ()]
    result = d.apply(d.plan(current, []))
    assert not result.errors, result
    assert engine.in_state() == set()
    assert all(pid is None for pid in engine.pilots().values())


# helpers ----------------------------------------------------------------------------------
def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        return e


def _engine_pids(d: PulumiDriver, command: bytes | None = None) -> list[int]:
    """The engine processes running for the driver (the pulumi COMMAND ones)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if Path(os.readlink(proc / "cwd")) == d.work and argv[0].endswith(b"pulumi") \
                        and (command is None or command in argv[1:3]):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def _plugin_pids(parents: list[int]) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in parents:
                out.append(int(proc.name))
    return out


def _pilot_count(engine: Engine, machine: str) -> int:
    cfg = str(engine.root / "machines" / "eng" / machine / "pilot.json").encode()
    n = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cfg in cmd and b"-m\0pilot" in cmd:
                n += 1
    return n
