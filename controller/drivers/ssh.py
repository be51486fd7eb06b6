"""The `ssh` driver: machines are hosts reachable over SSH, one pilot per host holding the
host's slots, deployed, stopped and probed with Ansible (playbooks/).

Creating a machine deploys and starts the pilot on that host (deploy-pilot.yml); deleting it
stops the pilot (stop-pilot.yml); probing gathers what a host offers (facts.yml). Hosts come
from the endpoint's membership (config and joins), which the loop hands over with
`set_hosts()` before each use. All hosts share one user and one private key; host keys must be
pinned in `known_hosts` unless trust-on-first-use is on, in which case a new key is accepted,
written to the controller's own known_hosts file for the endpoint and reported (`tofu`).

Every Ansible run happens in the endpoint's own worker thread (controller/reconcile/worker.py),
one at a time, never in the loop's tick nor on a request. Results are returned as data: per
host ok / unreachable / failed with the failing task and its message, and every task's result,
which the host-pool kind (controller/reconcile/hosts.py) stores as machine events."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.config.settings import SshConfig, SshEndpointConfig
from controller.domain.plans import PlanDiff
from controller.drivers.ansible import (
    PLAYBOOKS,
    RunOutcome,
    TaskResult,
    end_orphaned_runs,
    run_playbook,
)
from controller.drivers.base import ApplyResult, ObservedMachine, unfenced
from controller.drivers.bundle import pilot_zipapp
from controller.drivers.remote import ssh_options

log = logging.getLogger("cloudpilot.ssh")
SSH_ARGS = "-o ControlMaster=no -o ControlPersist=no"  # leave no `ssh [mux]` process behind


@dataclass(frozen=True)
class HostTarget:
    """One host as the driver needs it: where it is and what its pilot gets."""

    machine: str
    address: str
    port: int = 22
    slots: int = 1
    cores: int | None = None  # overrides; None: the pilot measures the host
    memory_mb: int | None = None
    leaving: bool = False  # its pilot's config (and token) is removed when stopped


@dataclass(frozen=True)
class SshResult(ApplyResult):
    """What an SSH run did: ApplyResult's created/deleted/errors, plus which errors were
    unreachable hosts, the facts each host reported, host keys accepted on first use (machine
    -> fingerprint), each run's per-host change counts and every task's result."""

    unreachable: frozenset[str] = frozenset()
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    tofu: dict[str, str] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)  # "<playbook> <machine>" -> changed
    tasks: tuple[tuple[str, TaskResult], ...] = ()  # (playbook, result)


def fingerprint(key_b64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a base64 public key."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_lines(path: Path) -> set[str]:
    try:
        return {ln.strip() for ln in path.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    except FileNotFoundError:
        return set()


def _facts_of(outcome: RunOutcome, machine: str) -> dict[str, Any]:
    """The JSON line files/inspect.py printed on the host, if this run ran it."""
    host = outcome.hosts.get(machine)
    for res in (host.results.values() if host is not None else ()):
        out = res.get("stdout") if isinstance(res, dict) else None
        if isinstance(out, str) and out.startswith("{") and '"memory_mb"' in out:
            try:
                facts = json.loads(out)
            except ValueError:
                continue
            return {k: v for k, v in facts.items() if k not in ("sha1", "created")}
    return {}


class SshDriver:
    def __init__(self, endpoint: SshEndpointConfig, data_dir: Path, controller_url: str,
                 token_for: Callable[[str], str], hide: Iterable[str] = ()) -> None:
        self.name = endpoint.name
        self.endpoint = endpoint
        self.ssh: SshConfig = endpoint.ssh
        self.controller_url = controller_url
        self.token_for = token_for  # each host's one-time bootstrap token
        # what pilots hide from payloads besides their own files: every pilot's directory on
        # the host (and the controller's files, should it share a filesystem with a host)
        self.hide = [self.ssh.remote_dir, *hide]
        self.root = data_dir / "ssh" / endpoint.name
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bundle = pilot_zipapp(self.root / "pilot.pyz")
        self.known_hosts = self.root / "known_hosts"  # keys accepted on first use, or joined
        self.known_hosts.touch(mode=0o600, exist_ok=True)
        self.hosts: dict[str, HostTarget] = {}
        self.cancel = threading.Event()
        end_orphaned_runs(self.root / "runs")  # from a controller that died mid-run
        self._sha_ctl = hashlib.sha1((PLAYBOOKS / "files" / "pilotctl.sh").read_bytes())
        self._sha_pyz = hashlib.sha1(self.bundle.read_bytes()).hexdigest()

    # membership --------------------------------------------------------------------------
    def set_hosts(self, hosts: Iterable[HostTarget]) -> None:
        self.hosts = {h.machine: h for h in hosts}

    def pin(self, line: str) -> None:
        """Pin a host key (a known_hosts line, e.g. given when a host joins)."""
        if line.strip() and line.strip() not in _known_lines(self.known_hosts):
            with open(self.known_hosts, "a") as f:
                f.write(line.strip() + "\n")

    def close(self) -> None:
        """Cancel a run in progress (the controller is shutting down)."""
        self.cancel.set()

    def refresh(self) -> None:
        """observe() reports the hosts handed over by set_hosts(): nothing to refresh."""

    # the driver interface ----------------------------------------------------------------
    def observe(self) -> list[ObservedMachine]:
        """The hosts this endpoint has. Whether a pilot runs on one is learned from its
        heartbeats, not from here: asking every host over SSH each tick would cost seconds."""
        return [ObservedMachine(h.machine, True, h.address, f"port {h.port}")
                for h in self.hosts.values()]

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        return PlanDiff.between(self.name, current, wanted)

    def apply(self, diff: PlanDiff, fence: Callable[[], None] = unfenced) -> SshResult:
        """Deploy and start pilots on diff.create; stop them on diff.delete."""
        fence()  # one playbook run for them all
        deploy = self._run("deploy-pilot.yml", diff.create)
        stop = self.stop(diff.delete)
        return SshResult(
            created=deploy.created, deleted=stop.deleted,
            errors={**deploy.errors, **stop.errors},
            unreachable=deploy.unreachable | stop.unreachable,
            facts={**deploy.facts}, tofu={**deploy.tofu, **stop.tofu},
            changed={**deploy.changed, **stop.changed}, tasks=deploy.tasks + stop.tasks)

    def stop(self, names: Iterable[str]) -> SshResult:
        """Stop the pilots on these hosts (also what a retry of a failed host runs)."""
        out = self._run("stop-pilot.yml", names)
        return SshResult(deleted=out.created, errors=out.errors, unreachable=out.unreachable,
                         tofu=out.tofu, changed=out.changed, tasks=out.tasks)

    def probe(self, names: Iterable[str]) -> SshResult:
        """Reach these hosts and gather what they offer (facts: in `facts`, hosts answering
        in `created`)."""
        return self._run("facts.yml", names)

    # running a playbook ------------------------------------------------------------------
    def _pilot_config(self, h: HostTarget) -> str:
        e = self.endpoint
        cfg: dict[str, Any] = {
            "controller_url": self.controller_url,
            "token": self.token_for(h.machine),
            "endpoint": e.name,
            "machine": h.machine,
            "slots": h.slots,
            "tags": e.tags,
            # a safety net: the controller normally stops idle pilots first, by name
            "idle_timeout": e.idle_timeout * 2 + 5,
            "orphan_timeout": e.orphan_timeout,
            "heartbeat_interval": e.heartbeat_interval,
            "workdir": "work",  # inside the pilot's directory on the host
            "isolation": e.isolation,
            "hide": self.hide,
        }
        if h.cores is not None:
            cfg["cores"] = h.cores
        if h.memory_mb is not None:
            cfg["memory_mb"] = h.memory_mb
        return json.dumps(cfg, sort_keys=True, indent=1) + "\n"

    def _ssh_common_args(self) -> str:
        files = [self.known_hosts]
        if self.ssh.known_hosts is not None:
            files.append(self.ssh.known_hosts.expanduser())
        opts = ssh_options(files, trust_on_first_use=self.ssh.trust_on_first_use,
                           connect_timeout=self.ssh.connect_timeout)
        return " ".join(f"-o {shlex.quote(o)}" for o in opts)

    def _run(self, playbook: str, names: Iterable[str]) -> SshResult:
        targets = [self.hosts[n] for n in sorted(set(names)) if n in self.hosts]
        unknown = sorted(set(names) - {t.machine for t in targets})
        if not targets:
            # a host no longer in the endpoint has nothing left to deploy or stop
            return SshResult(created=tuple(unknown) if playbook == "stop-pilot.yml" else ())
        files: dict[str, str] = {}
        hostvars: dict[str, dict[str, Any]] = {}
        for t in targets:
            v: dict[str, Any] = {"ansible_host": t.address, "ansible_port": t.port,
                                 "cp_root": f"{self.ssh.remote_dir.rstrip('/')}/{t.machine}",
                                 "cp_forget": t.leaving}
            if playbook == "deploy-pilot.yml":
                files[f"{t.machine}.json"] = text = self._pilot_config(t)
                v["cp_config"] = f"{t.machine}.json"
                v["cp_sha1"] = {"pilot.pyz": self._sha_pyz,
                                "pilotctl.sh": self._sha_ctl.hexdigest(),
                                "pilot.json": hashlib.sha1(text.encode()).hexdigest()}
            hostvars[t.machine] = v
        inventory = {"all": {"hosts": hostvars, "vars": {
            "ansible_connection": "ssh", "ansible_user": self.ssh.user,
            "ansible_ssh_private_key_file": str(self.ssh.key.expanduser()),
            "ansible_python_interpreter": self.ssh.python,
            "ansible_ssh_common_args": self._ssh_common_args(),
        }}}
        before = _known_lines(self.known_hosts)
        outcome = run_playbook(
            playbook, inventory, ident=f"{self.name}-{Path(playbook).stem}-{time.time():.0f}",
            extravars={"cp_bundle": str(self.bundle), "cp_stop_grace": self.ssh.stop_grace},
            files=files, ssh_args=SSH_ARGS, job_timeout=self.ssh.run_timeout,
            idle_timeout=max(self.ssh.connect_timeout * 3, self.ssh.stop_grace + 30),
            forks=max(len(targets), 1), cancel=self.cancel, work_root=self.root / "runs")
        ok, errors, unreachable, facts, changed = [], {}, set(), {}, {}
        for t in targets:
            h = outcome.host(t.machine)
            changed[f"{playbook} {t.machine}"] = h.changed
            if h.unreachable:
                unreachable.add(t.machine)
                errors[t.machine] = f"{playbook}: {h.error}"
            elif h.failed:
                errors[t.machine] = f"{playbook}: {h.error}"
            else:
                ok.append(t.machine)
            got = _facts_of(outcome, t.machine)
            if got:
                facts[t.machine] = got
        if playbook == "stop-pilot.yml":
            ok += unknown
        return SshResult(created=tuple(ok), errors=errors, unreachable=frozenset(unreachable),
                         facts=facts, tofu=self._new_keys(before, targets), changed=changed,
                         tasks=tuple((playbook, r) for r in outcome.tasks))

    def _new_keys(self, before: set[str], targets: list[HostTarget]) -> dict[str, str]:
        """Host keys ssh accepted on first use during the run (trust_on_first_use only)."""
        out = {}
        for line in _known_lines(self.known_hosts) - before:
            parts = line.split()
            if len(parts) < 3:
                continue
            for t in targets:
                where = t.address if t.port == 22 else f"[{t.address}]:{t.port}"
                if where in parts[0].split(","):
                    out[t.machine] = f"{parts[1]} {fingerprint(parts[2])}"
        return out
