"""The driver of a batch endpoint: the site's login node over SSH, running a batch system's
adapter (controller/drivers/batch.py) there."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.config.settings import BatchEndpointConfig, BatchSiteConfig
from controller.domain.batch import BatchJob, BatchState
from controller.domain.plans import PlanDiff
from controller.drivers.base import ApplyResult, ObservedMachine, unfenced
from controller.drivers.batch import BatchCommandError, BatchSystem, PilotSubmission, remote_base
from controller.drivers.bundle import pilot_zipapp
from controller.drivers.remote import RemoteSession, RemoteShell
from controller.drivers.sge import GridEngine
from controller.drivers.slurm import Slurm
from controller.errors import DriverError

log = logging.getLogger("cloudpilot.batch")
SYSTEMS: dict[str, Callable[[BatchEndpointConfig], BatchSystem]] = {"slurm": Slurm,
                                                                    "sge": GridEngine}


@dataclass(frozen=True)
class Snapshot:
    """The batch system's answer to the last status query."""

    jobs: dict[str, BatchJob] = field(default_factory=dict)  # by job id
    at: float | None = None  # when it was asked (None: not yet)

    def latest(self) -> dict[str, BatchJob]:
        """The newest job of each machine (a name may recur after the controller's database
        was reset, while the batch system still remembers the old job)."""
        out: dict[str, BatchJob] = {}
        for j in sorted(self.jobs.values(), key=lambda j: (len(j.id), j.id)):
            out[j.machine] = j
        return out


class BatchDriver:
    """One batch endpoint's login node: places files, submits, cancels, asks for status.
    Every call is SSH (hundredths of a second to seconds): the batch kind of endpoint
    (controller/reconcile/batch.py) runs them in its worker, never in the loop's tick."""

    def __init__(self, ep: BatchEndpointConfig, data_dir: Path, controller_url: str,
                 token_for: Callable[[str], str], system: BatchSystem,
                 clock: Callable[[], float] = time.time, hide: Iterable[str] = ()) -> None:
        assert ep.batch is not None
        self.name = ep.name
        self.ep = ep
        self.cfg: BatchSiteConfig = ep.batch
        self.system = system
        self.clock = clock
        self.controller_url = controller_url
        self.token_for = token_for  # a machine's one-time bootstrap token
        # what pilots hide from payloads besides their own files: every pilot's directory
        # on the cluster, and the controller's files where it shares a file system with it
        self.hide = [self.cfg.remote_dir, *hide]
        self.root = data_dir / "batch" / ep.name
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        known = [self.root / "known_hosts"]  # a key accepted on first use lands here
        known[0].touch(mode=0o600, exist_ok=True)
        if self.cfg.known_hosts is not None:
            known.insert(0, self.cfg.known_hosts.expanduser())
        c = self.cfg  # one connection and one remote shell for all commands
        self.shell = RemoteSession(RemoteShell(c.address, c.port, c.user, c.key, tuple(known),
                                               c.trust_on_first_use, c.connect_timeout,
                                               c.command_timeout))
        self.base = remote_base(self.cfg.remote_dir, ep.name)
        self.files = {"pilot.pyz": pilot_zipapp(self.root / "pilot.pyz").read_bytes(),
                      "pilot.sh": system.script().encode()}
        self.placed = False
        self.snapshot = Snapshot()
        self._running_since: dict[str, float] = {}

    def close(self) -> None:
        """End the SSH session (its ssh process, by PID)."""
        self.shell.close()

    # the commands ------------------------------------------------------------------------
    def place(self) -> list[str]:
        """Put the pilot and the batch script on the login node unless they are there
        already (compared by SHA-1); return the files sent."""
        if self.placed:
            return []
        names = " ".join(self.files)
        _, out, _ = self.shell.run(
            f"umask 077; mkdir -p {self.base} && cd {self.base} && for f in {names}; do "
            f'echo "$f $(sha1sum < "$f" 2>/dev/null | cut -c1-40)"; done')
        have = dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)
        sent = []
        for name, data in self.files.items():
            if have.get(name, "").strip() == hashlib.sha1(data).hexdigest():
                continue
            mode = "755" if name.endswith(".sh") else "644"
            self.shell.run(f"cd {self.base} && cat > {name}.tmp && chmod {mode} {name}.tmp "
                           f"&& mv {name}.tmp {name}", data)
            sent.append(name)
        self.placed = True
        return sent

    def pilot_config(self, machine: str) -> str:
        e = self.ep
        return json.dumps({
            "controller_url": self.controller_url, "token": self.token_for(machine),
            "endpoint": e.name, "isolation": e.isolation, "hide": self.hide,
            "machine": machine, "slots": e.slots, "cores": e.cores, "memory_mb": e.memory_mb,
            "tags": e.tags, "idle_timeout": e.idle_timeout,  # idle pilots leave on their own
            "orphan_timeout": e.orphan_timeout,
            "heartbeat_interval": e.heartbeat_interval, "workdir": "work",
            "time_margin": self.cfg.time_margin}, sort_keys=True)

    def submit(self, machines: Iterable[str]) -> dict[str, str | BatchCommandError]:
        """Submit one pilot job per machine: machine -> job id, or the error."""
        pilots = [PilotSubmission(m, self.pilot_config(m)) for m in machines]
        try:
            self.place()
            return self.system.submit(self.shell, self.base, pilots)
        except DriverError:
            self.placed = False  # check again next time
            raise

    def cancel(self, ids: Sequence[str]) -> None:
        self.system.cancel(self.shell, ids)

    def refresh(self) -> Snapshot:
        """Ask the batch system for every pilot job of this endpoint. A job seen running gets
        the controller's time of first sight as its start (clocks of sites differ)."""
        asked = self.clock()
        jobs = {j.id: j for j in self.system.status(self.shell, self.name)}
        for i, j in list(jobs.items()):
            if j.state == BatchState.RUNNING:
                since = self._running_since.setdefault(i, asked)
                jobs[i] = dataclasses.replace(j, started_at=since)
        self._running_since = {i: t for i, t in self._running_since.items() if i in jobs}
        self.snapshot = Snapshot(jobs, asked)
        return self.snapshot

    # the Driver interface, for the loop's generic parts ------------------------------------
    def observe(self) -> list[ObservedMachine]:
        """The pilot jobs as last reported (the query itself runs in the worker)."""
        return [ObservedMachine(m, j.state != BatchState.ENDED, j.node,
                                f"{self.system.name} job {j.id}: {j.detail}")
                for m, j in self.snapshot.latest().items()]

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        return PlanDiff.between(self.name, current, wanted)

    def apply(self, diff: PlanDiff, fence: Callable[[], None] = unfenced) -> ApplyResult:
        """Submit diff.create, cancel diff.delete (synchronously)."""
        fence()  # one submission of them all, one cancel
        errors: dict[str, str] = {}
        created = []
        for m, got in self.submit(diff.create).items():
            if isinstance(got, BatchCommandError):
                errors[m] = str(got)
            else:
                created.append(m)
        ids = [j.id for m, j in self.snapshot.latest().items() if m in diff.delete]
        self.cancel(ids)
        return ApplyResult(tuple(created), tuple(diff.delete), errors)
