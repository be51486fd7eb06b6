"""The `local` driver: a machine is a pilot process in its own directory on this host.

This is the embedded default, so the whole loop (queue -> scheduler -> machines -> pilots ->
jobs -> idle machines stopped) runs on one laptop with no cloud. The machines' directories
live outside the controller's data dir (settings.local_machines_dir), and each pilot is told
to hide them, the data dir and the database from its payloads."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from controller.config.settings import LocalEndpointConfig
from controller.domain.plans import PlanDiff
from controller.drivers import contextualization
from controller.drivers.base import ApplyResult, ObservedMachine, Refusing, unfenced
from controller.drivers.proctree import MachineProcesses
from controller.errors import DriverError

REPO_ROOT = Path(__file__).resolve().parents[2]


# the controller's own secrets in its environment: the database's (libpq's PG*), the clouds'
# and Pulumi's credentials, its settings; a local machine's pilot (and so its payloads) gets none
SECRET_ENV = ("PG", "CLOUDPILOT_", "AWS_", "OS_", "PULUMI_")


def pilot_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a local machine's pilot starts with: the controller's, minus its
    secrets (SECRET_ENV)."""
    return {k: v for k, v in environ.items() if not k.startswith(SECRET_ENV)}


class PilotProcesses:
    """A host's local machines under `root`: each a pilot process in its own directory (its
    pid file, its config, its work directory) and its own process tree. The local driver
    runs them directly; stacks/local runs them as the resources of a Pulumi stack."""

    def __init__(self, root: Path, stop_grace: float = 10.0) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root
        self.stop_grace = stop_grace
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # helpers -----------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / name

    def _pid(self, name: str) -> int | None:
        try:
            return int((self._dir(name) / "pilot.pid").read_text())
        except (OSError, ValueError):
            return None

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is not None:
            return proc.poll() is None
        pid = self._pid(name)  # started by an earlier controller process
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self._dir(name)).encode() in cmdline

    def running(self, name: str) -> int | None:
        """The machine's pilot's pid while it runs, else None."""
        return self._pid(name) if self._alive(name) else None

    def observe(self) -> list[ObservedMachine]:
        try:
            dirs = sorted(self.root.iterdir())
        except OSError as e:
            raise DriverError(f"cannot read {self.root}: {e}") from None
        out = []
        for d in dirs:
            if d.is_dir() and (d / "pilot.pid").exists():
                pid = self._pid(d.name)
                out.append(ObservedMachine(d.name, self._alive(d.name), "127.0.0.1",
                                           f"pid {pid}"))
        for name, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[name]  # reaped
        return out

    def start(self, name: str, config: Mapping[str, Any]) -> int:
        """Start the machine's pilot with this config (idempotent: a machine whose pilot runs
        is left alone); its pid."""
        pid = self._pid(name)
        if pid is not None and self._alive(name):
            return pid
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg = d / "pilot.json"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(config), f)
        env = pilot_env(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                           env.get("PYTHONPATH")]))
        tree = self._tree(name)  # every process of the machine, payloads included
        env.update(tree.env())
        with open(d / "pilot.log", "ab") as log:
            proc = subprocess.Popen(
                tree.wrap([sys.executable, "-m", "pilot", "--config", str(cfg)]),
                cwd=d, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,  # survives a controller restart
            )
        self._procs[name] = proc
        (d / "pilot.pid").write_text(str(proc.pid))
        return proc.pid

    def stop(self, names: Iterable[str]) -> None:
        """Stop the machines' pilots (SIGTERM, SIGKILL after stop_grace), end whatever of
        them is left, and remove their files (idempotent)."""
        names = list(names)
        stopping = [n for n in names if self._signal(n, signal.SIGTERM)]
        deadline = time.monotonic() + self.stop_grace
        while any(self._alive(n) for n in stopping) and time.monotonic() < deadline:
            time.sleep(0.1)
        for name in names:
            if self._alive(name):
                self._signal(name, signal.SIGKILL)
            self._cleanup(name)

    def _tree(self, name: str) -> MachineProcesses:
        return MachineProcesses(self.root, name)

    def reap(self, name: str) -> bool:
        """Kill everything of the machine (its pilot and every payload, also those in their
        own sessions) and wait for it: True when nothing of it runs any more, so its jobs
        may run elsewhere at once."""
        dead = self._tree(name).kill()
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)  # reap our child
        return dead and not self._alive(name)

    def _signal(self, name: str, sig: int) -> bool:
        if not self._alive(name):
            return False
        proc = self._procs.get(name)
        pid = proc.pid if proc else self._pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def _cleanup(self, name: str) -> None:
        d = self._dir(name)
        proc = self._procs.pop(name, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._tree(name).kill()  # payloads the pilot left behind
        (d / "pilot.pid").unlink(missing_ok=True)
        (d / "pilot.json").unlink(missing_ok=True)  # it held the (spent) bootstrap token
        shutil.rmtree(d / "work", ignore_errors=True)


class LocalDriver(PilotProcesses):
    def __init__(self, endpoint: LocalEndpointConfig, machines_dir: Path, controller_url: str,
                 token_for: Callable[[str], str], hide: Iterable[str] = (),
                 stop_grace: float = 10.0) -> None:
        self.name = endpoint.name
        self.endpoint = endpoint
        machines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().__init__(machines_dir / endpoint.name, stop_grace)
        self.controller_url = controller_url
        self.token_for = token_for  # each machine's one-time bootstrap token
        # what the pilots hide from payloads: every machine's directory, the controller's files
        self.hide = [str(machines_dir.resolve()), *hide]
        self.refusing = Refusing(endpoint.refuse)  # issue 24: offers refused as sold out

    def pilot_config(self, name: str,
                     spec: Mapping[str, Any] | None = None) -> dict[str, object]:
        """The settings the endpoint's `pilot` user-data (cloud-init/pilot.yaml) writes for this
        machine: rendered and read back, so the local endpoint runs what cloud machines run.
        `spec` (priced endpoints) gives the machine type's cores, memory and slots. Only the
        work directory and what the pilot hides from payloads are this host's own."""
        user_data = contextualization.render_pilot(contextualization.pilot_settings(
            self.endpoint, self.controller_url, self.token_for(name), name, spec),
            max_machine_age=self.endpoint.max_machine_age)
        cfg = contextualization.pilot_settings_from(user_data)
        cfg["workdir"] = str(self._dir(name) / "work")
        cfg["hide"] = self.hide
        return cfg

    # the driver interface ----------------------------------------------------------------
    def refresh(self) -> None:
        """observe() reads the machines' directories each time: nothing to refresh."""

    def close(self) -> None:
        """Pilot processes outlive the controller (their own sessions): nothing to stop."""

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        return PlanDiff.between(self.name, current, wanted)

    def apply(self, diff: PlanDiff, fence: Callable[[], None] = unfenced) -> ApplyResult:
        created: list[str] = []
        errors: dict[str, str] = {}
        for name in diff.create:
            no = self.refusing.refuses(diff.specs.get(name))
            if no is not None:
                errors[name] = no
                continue
            time.sleep(self.endpoint.slow_start)  # a slow cloud (tests, demos)
            fence()
            try:
                self.start(name, self.pilot_config(name, diff.specs.get(name)))
                created.append(name)
            except OSError as e:
                errors[name] = f"could not start a pilot process: {e}"
        if diff.delete:
            fence()
        self.stop(diff.delete)
        return ApplyResult(tuple(created), tuple(diff.delete), errors)
