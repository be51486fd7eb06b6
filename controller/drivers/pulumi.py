"""The Pulumi driver: an AWS or OpenStack endpoint's machines are one Pulumi stack (and a
local endpoint's with `via = "pulumi"`: stacks/local, pilot processes on this host).

- One stack per endpoint (named after it), through the Automation API's LocalWorkspace with a
  local file backend under `data_dir/pulumi/state` (no login to any service) and the
  passphrase secrets provider (PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE).
- The program is stacks/aws or stacks/openstack, run inline. Its config is the endpoint's TOML
  section plus the set of *named* machines (`stack_config`). Each machine's user-data (it
  holds the endpoint's pilot token) is handed to the inline program in-process and becomes a
  Pulumi secret there, so it is never on a command line nor in the stack's config file.
- plan = `preview --save-plan` with the new set of named machines: the plan keeps Pulumi's
  own update plan (PlanDiff.engine_plan; its secrets encrypted by the stack's passphrase)
  and its steps; apply = `up --plan` with that saved plan, so exactly what was reviewed is
  applied (or `destroy` when no machine is wanted). When the stack changed since the
  preview, the engine refuses the plan: StalePlan (the plan fails; the next tick previews
  anew). refresh = read the stack's `machines` output; observe = what it last read (None
  when that is older than `observe_every` seconds: the endpoint's worker then refreshes it;
  apply re-reads it too).
- Before each command, what a killed engine left behind is cleared: its lock (file backend,
  this host, its process gone) and its pending operations (dropped from the state, then the
  stack is refreshed: the providers are idempotent per machine name, so nothing starts
  twice). A lock held by a live update fails the command with who holds it. `cancel` sends
  the running engine SIGINT (apply_timeout): it stops after the steps in flight.
- Drift: `drift()` runs `preview --refresh --expect-no-changes`; a change is drift.

Assumptions, as the Driver protocol says: apply returns when `up` is done (the machines then
boot and their pilots register) and runs in the endpoint's worker thread, never in the loop's
tick; it is idempotent per machine name (the stack declares the wanted set). Errors are raised
as DriverError with one clear line; the loop turns them into endpoint state and a back-off. A
failed `up` reports, per machine, what the stack state says exists, so the controller's view
of its machines is never lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from controller.config.settings import (
    AwsEndpointConfig,
    CloudEndpointConfig,
    EndpointConfig,
    LocalEndpointConfig,
    OpenStackEndpointConfig,
    PricedEndpointConfig,
)
from controller.domain.plans import PlanDiff
from controller.drivers import contextualization
from controller.drivers.base import NOT_TRIED, ApplyResult, ObservedMachine, unfenced
from controller.errors import DriverError, DriverSetupError

log = logging.getLogger("cloudpilot.pulumi")

PROJECT = "cloudpilot"
INSTANCE_TYPES = {"aws": "aws:ec2/instance:Instance",
                  "openstack": "openstack:compute/instance:Instance",
                  "local": "pulumi-python:dynamic/cloudpilot:LocalMachine"}
PROVIDER_PACKAGES = {"aws": "pulumi_aws", "openstack": "pulumi_openstack"}
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
ENGINE_VERSION = "v3.276.0"  # what `make pulumi` builds (tools/pulumi)
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILT_ROOT = REPO_ROOT / ".tools" / f"pulumi-{ENGINE_VERSION}"
DYNAMIC_PLUGIN = "pulumi-resource-pulumi-python"  # runs Python dynamic providers


def missing_cli_message(kind: str) -> str:
    plugin = "" if kind not in PROVIDER_PACKAGES else (
        f", and the {kind} provider plugin (pulumi plugin install resource {kind})")
    return ("the pulumi CLI is not installed: run `make pulumi` in the cloudpilot checkout "
            f"(builds the engine {ENGINE_VERSION} into {BUILT_ROOT.relative_to(REPO_ROOT)}), "
            "or install the official CLI (curl -fsSL https://get.pulumi.com | sh) and put it "
            "on the controller's PATH or set pulumi_root" + plugin)


def pulumi_root(configured: Path | None) -> Path | None:
    """Where the CLI is: the configured root, else the one on PATH (None: the Automation API
    finds it there), else the one `make pulumi` built."""
    if configured is not None:
        return configured
    if shutil.which("pulumi"):
        return None
    return BUILT_ROOT if (BUILT_ROOT / "bin" / "pulumi").exists() else None


class StalePlan(DriverError):
    """The stack changed since the plan's preview: the engine refused to apply it."""


class StackLocked(DriverError):
    """Another update of the stack is running."""


# how the engine (pkg/resource/deploy) says the world no longer matches a saved plan
_PLAN_REFUSED = re.compile(r"is not allowed by the plan|violates plan|no plan for resource|"
                           r"expected a new resource plan|resource unexpectedly not deleted",
                           re.I)


# pure helpers (tested without the CLI) ----------------------------------------------------------
_STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def stack_name(endpoint: str) -> str:
    """The endpoint's stack: one per endpoint, named after it (a valid Pulumi stack name)."""
    if not _STACK_NAME.match(endpoint):
        raise DriverSetupError(f"endpoint name {endpoint!r} is not a valid stack name")
    return endpoint


Spec = Mapping[str, Any]


def machine_specs(kind: str, specs: Mapping[str, Spec]) -> dict[str, dict[str, Any]]:
    """Priced endpoints: what the scheduler chose for each new machine (type, zone, market),
    in the stack's terms. Machines without a spec get the endpoint's defaults."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in sorted(specs.items()):
        one: dict[str, Any] = {}
        if spec.get("type"):
            one["instanceType" if kind == "aws" else "flavor"] = spec["type"]
        if spec.get("zone"):
            one["availabilityZone"] = spec["zone"]
        if kind == "aws" and spec.get("market"):
            one["spot"] = spec["market"] == "spot"
        if one:
            out[name] = one
    return out


def stack_config(endpoint: PricedEndpointConfig, machines: Iterable[str],
                 specs: Mapping[str, Spec] | None = None) -> dict[str, str]:
    """The stack's config (not secret): the endpoint's cloud section, the named machines and,
    on priced endpoints, each new machine's type, zone and market."""
    if not isinstance(endpoint, CloudEndpointConfig):
        raise DriverSetupError("local endpoints: use local_stack_config")
    cloud = endpoint.cloud()
    assert cloud is not None
    try:
        key = cloud.read_public_key()
    except ValueError as e:
        raise DriverSetupError(f"endpoint {endpoint.name}: {e}") from None
    cfg: dict[str, Any] = {
        "cloud": endpoint.driver,
        "endpoint": endpoint.name,
        "machines": json.dumps(sorted(set(machines))),
        "contextualization": endpoint.contextualization,
        "publicKey": key,
        "keyName": cloud.key_name,
        "sshCidr": cloud.ssh_cidr,
        "tags": json.dumps(cloud.tags, sort_keys=True) if cloud.tags else None,
        "machineSpecs": json.dumps(machine_specs(endpoint.driver, specs), sort_keys=True)
        if specs and machine_specs(endpoint.driver, specs) else None,
    }
    if isinstance(endpoint, AwsEndpointConfig):
        a = endpoint.aws
        cfg.update({
            "aws:region": a.region, "ami": a.ami, "instanceType": a.instance_type,
            "subnetId": a.subnet_id, "availabilityZone": a.availability_zone,
            "subnets": json.dumps(a.subnets, sort_keys=True) if a.subnets else None,
            "vpcId": a.vpc_id, "spot": "true" if a.spot else "false",
            "spotMaxPrice": None if a.spot_max_price is None else f"{a.spot_max_price:g}",
            "rootVolumeGb": a.root_volume_gb,
        })
    if isinstance(endpoint, OpenStackEndpointConfig):
        o = endpoint.openstack
        cfg.update({
            "openstack:cloud": o.cloud, "openstack:region": o.region, "flavor": o.flavor,
            "image": o.image, "network": o.network, "floatingIpPool": o.floating_ip_pool,
            "availabilityZone": o.availability_zone,
        })
    return {(k if ":" in k else f"{PROJECT}:{k}"): str(v) for k, v in cfg.items()
            if v is not None}


def local_stack_config(endpoint: EndpointConfig, machines: Iterable[str], machines_dir: Path,
                       stop_grace: float = 10.0) -> dict[str, str]:
    """stacks/local's config: the endpoint, the named machines, where their directories are."""
    return {f"{PROJECT}:cloud": "local", f"{PROJECT}:endpoint": endpoint.name,
            f"{PROJECT}:machines": json.dumps(sorted(set(machines))),
            f"{PROJECT}:machinesDir": str(machines_dir / endpoint.name),
            f"{PROJECT}:stopGrace": f"{stop_grace:g}"}


@dataclass(frozen=True)
class Step:
    """One resource step of a preview: op (create, delete, replace, update, same...), the
    resource's type token, its logical name and, for an update or a replacement, the
    properties that change."""

    op: str
    type: str
    name: str
    changed: tuple[str, ...] = ()

    @classmethod
    def from_urn(cls, op: str, type_: str, urn: str, changed: Iterable[str] = ()) -> Step:
        return cls(op, type_, urn.rsplit("::", 1)[-1], tuple(changed))

    @classmethod
    def from_event(cls, metadata: Any) -> Step:
        """A step from the Automation API's event (StepEventMetadata)."""
        m = metadata
        return cls.from_urn(getattr(m.op, "value", str(m.op)), m.type, m.urn,
                            m.diffs or m.keys or ())


_OP_MARK = {"create": "+", "delete": "-", "update": "~", "replace": "+-",
            "create-replacement": "+-", "delete-replaced": "-+", "read": ">"}


def plan_from_preview(kind: str, endpoint: str, current: Iterable[str], wanted: Iterable[str],
                      steps: Iterable[Step], summary: Mapping[str, int]) -> PlanDiff:
    """A stack preview as a plan: the machines created and deleted are named by the wanted
    set; the detail is what the stack will do, resource by resource, and says where the stack
    disagrees with the controller (a machine it would create or delete that the plan does
    not name)."""
    diff = PlanDiff.between(endpoint, current, wanted)
    instance = INSTANCE_TYPES[kind]
    counts = ", ".join(f"{n} to {op}" for op, n in sorted(summary.items()) if n and op != "same")
    same = summary.get("same", 0)
    lines = [f"preview of stack {stack_name(endpoint)}: {counts or 'no changes'}"
             + (f", {same} unchanged" if same else "")]
    changed = [s for s in steps if s.op != "same"]
    for s in changed[:40]:
        lines.append(f"  {_OP_MARK.get(s.op, s.op)} {s.type} {s.name}"
                     + (f" ({', '.join(s.changed)})" if s.changed else ""))
    if len(changed) > 40:
        lines.append(f"  ... and {len(changed) - 40} more")
    made = {s.name for s in changed if s.type == instance and s.op == "create"}
    gone = {s.name for s in changed if s.type == instance and s.op == "delete"}
    odd = (made - set(diff.create)) | (gone - set(diff.delete))
    odd |= (set(diff.create) - made) | (set(diff.delete) - gone) if changed else set()
    if odd:
        lines.append("  note: the stack's state disagrees with the controller about "
                     + ", ".join(sorted(odd)))
    return PlanDiff(diff.endpoint, diff.create, diff.delete, diff.wanted, "\n".join(lines))


def machines_from_outputs(outputs: Mapping[str, Any]) -> list[ObservedMachine]:
    """The stack's `machines` output (name -> id, private_ip, public_ip) as observed machines."""
    machines = outputs.get("machines") or {}
    out = []
    for name, m in sorted(machines.items()):
        m = m or {}
        addr = m.get("public_ip") or m.get("private_ip")
        detail = f"id {m.get('id')}" + (f", private {m['private_ip']}"
                                        if m.get("private_ip") else "")
        out.append(ObservedMachine(name, True, addr, detail))
    return out


def machines_in_state(kind: str, deployment: Mapping[str, Any]) -> set[str]:
    """The machines a stack's exported state holds (what exists after a failed `up`)."""
    instance = INSTANCE_TYPES[kind]
    return {r["urn"].rsplit("::", 1)[-1] for r in deployment.get("resources", [])
            if r.get("type") == instance and not r.get("delete")}


_NOISE = (r"(update|preview|destroy|refresh) failed|\d+ errors? occurred:?|"
          r"Traceback \(most recent call last\):|Resource monitor has terminated, shutting down")


def error_line(e: BaseException) -> str:
    """The useful part of a Pulumi error (what follows its `error:` marks, without the
    "update failed" and "N errors occurred" lines), not its whole output."""
    text = str(e)
    found = []
    for ln in text.splitlines():
        m = re.search(r"\berror: (.*)", ln)
        msg = m.group(1).strip() if m else ""
        if msg and not re.fullmatch(_NOISE, msg):
            found.append(msg)
        # a provider's Python traceback: its last line (the exception) says what went wrong
        m = re.match(r"\s+([A-Za-z_][\w.]*(?:Error|Exception)(?::.*)?)$", ln)
        if m:
            found.append(m.group(1).strip())
    line = " / ".join(dict.fromkeys(found)) or next(
        (ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return line[:400]


def failing_machines(output: str, names: Iterable[str]) -> set[str]:
    """The machines (of `names`) an engine's output names on a line with an error (issue 24:
    a refusal blocks only the offers of the machines refused)."""
    out = set()
    for name in names:
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])[^\n]*\berror\b", output):
            out.add(name)
    return out


# the driver -------------------------------------------------------------------------------------
class PulumiDriver:
    def __init__(self, endpoint: PricedEndpointConfig, data_dir: Path, controller_url: str,
                 token_for: Callable[[str], str], observe_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, *,
                 machines_dir: Path | None = None, hide: Iterable[str] = (),
                 root: Path | None = None, backend_url: str | None = None) -> None:
        if endpoint.driver not in INSTANCE_TYPES:
            raise DriverSetupError(f"endpoint {endpoint.name}: the Pulumi driver is for aws "
                                   "and openstack endpoints, and local ones via pulumi")
        self.name = endpoint.name
        self.kind = endpoint.driver
        self.endpoint = endpoint
        self.root = data_dir / "pulumi"
        self.cli_root = pulumi_root(root)
        self.backend_url = backend_url or f"file://{self.root / 'state'}"
        self.controller_url = controller_url
        self.token_for = token_for  # each machine's one-time bootstrap token
        self.observe_every = observe_every
        self.clock = clock
        self.local: Any = None
        if self.kind == "local":  # stacks/local: the pilots' configs, as the local driver's
            from controller.drivers.local import LocalDriver

            if machines_dir is None:
                raise DriverSetupError(f"endpoint {endpoint.name}: no machines_dir")
            assert isinstance(endpoint, LocalEndpointConfig)
            self.local = LocalDriver(endpoint, machines_dir, controller_url, token_for, hide)
            self.machines_dir = machines_dir
        self._stack: Any = None
        self._observed: list[ObservedMachine] | None = None
        self._observed_at = 0.0
        self._previews: dict[tuple[frozenset[str], frozenset[str]], PlanDiff] = {}
        self._cancelled = False  # cancel() interrupted the running update

    # set-up --------------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        return self.root / "work" / self.name

    def env(self) -> dict[str, str]:
        """What every pulumi command of this endpoint runs with (no secret: the passphrase
        stays in the controller's environment, which the engine inherits)."""
        if not any(os.environ.get(v) for v in PASSPHRASE_VARS):
            raise DriverSetupError(
                "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) for the "
                "controller: it encrypts the stack's secrets (the pilot token in user-data)")
        path = os.pathsep.join(filter(None, [str(self.root / "bin"),
                                             str(self.cli_root / "bin") if self.cli_root else "",
                                             os.environ.get("PATH", "")]))
        return {"PULUMI_BACKEND_URL": self.backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true",
                "PULUMI_EXPERIMENTAL": "true",  # update plans (--save-plan, --plan)
                "PULUMI_DIY_BACKEND_NO_RETRY": "true", "PATH": path}

    def _write_plugin(self) -> None:
        """The engine runs Python dynamic providers (stacks/local) through this plugin: the
        controller's own Python, so the provider imports what the controller does."""
        plugin = self.root / "bin" / DYNAMIC_PLUGIN
        text = f'#!/bin/sh\nexec "{sys.executable}" -m pulumi.dynamic "$@"\n'
        if not plugin.exists() or plugin.read_text() != text:
            plugin.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = plugin.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(plugin)

    def user_data(self, machines: Iterable[str], specs: Mapping[str, Spec] | None = None,
                  new: Iterable[str] | None = None) -> dict[str, str]:
        """Each machine's user-data. Local machines: the pilot's config (JSON), as the local
        driver writes it, for the machines `new` names (all when None); a machine that
        exists already gets only its name (its provider ignores the config once created), so
        a preview and the `up` of its saved plan declare the same inputs even when a pilot's
        bootstrap token was spent (and renewed) between them."""
        specs = specs or {}
        if self.local is not None:
            fresh = None if new is None else set(new)
            return {m: json.dumps(self.local.pilot_config(m, specs.get(m))
                                  if fresh is None or m in fresh else {"machine": m},
                                  sort_keys=True)
                    for m in machines}
        return {m: contextualization.user_data(self.endpoint, self.controller_url,
                                               self.token_for(m), m, specs.get(m))
                for m in machines}

    def _program(self, machines: Iterable[str], specs: Mapping[str, Spec] | None = None,
                 new: Iterable[str] | None = None) -> Callable[[], None]:
        data = self.user_data(machines, specs, new)
        if self.kind == "local":
            from stacks.local import program as local_program

            return lambda: local_program(user_data=data)
        if self.kind == "aws":
            from stacks.aws import program as aws_program

            return lambda: aws_program(user_data=data)
        from stacks.openstack import program as openstack_program

        return lambda: openstack_program(user_data=data)

    def stack(self) -> Any:
        """The endpoint's stack (created on first use), or DriverSetupError saying what is
        missing: the Pulumi SDK, the pulumi CLI, the passphrase, the provider plugin."""
        if self._stack is not None:
            return self._stack
        try:
            from pulumi import automation as auto
        except ImportError:
            raise DriverSetupError("the Pulumi SDK is not installed: pip install "
                                   "'cloudpilot[cloud]'") from None
        try:  # the Automation API runs `pulumi version` first
            cmd = auto.PulumiCommand(root=str(self.cli_root) if self.cli_root else None)
        except FileNotFoundError:
            raise DriverSetupError(missing_cli_message(self.kind)) from None
        except auto.errors.InvalidVersionError as e:
            raise DriverSetupError(f"the pulumi CLI is too old: {e}") from None
        env = self.env()
        for d in (self.root / "state", self.work):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_plugin()
        opts = auto.LocalWorkspaceOptions(
            work_dir=str(self.work), env_vars=env, secrets_provider="passphrase",
            pulumi_command=cmd,
            project_settings=auto.ProjectSettings(
                name=PROJECT, runtime="python",
                backend=auto.ProjectBackend(url=env["PULUMI_BACKEND_URL"])))
        try:
            self._clear_stale_lock()
            stack = auto.create_or_select_stack(stack_name(self.name), project_name=PROJECT,
                                                program=self._program(()), opts=opts)
            if self.kind in PROVIDER_PACKAGES:
                version = metadata.version(PROVIDER_PACKAGES[self.kind].replace("_", "-"))
                stack.workspace.install_plugin(self.kind, f"v{version}")
        except FileNotFoundError:
            raise DriverSetupError(missing_cli_message(self.kind)) from None
        except auto.errors.CommandError as e:
            raise DriverSetupError(f"could not set up stack {self.name}: {error_line(e)}") \
                from None
        self._stack = stack
        return stack

    def _configure(self, machines: Iterable[str], specs: Mapping[str, Spec] | None = None,
                   new: Iterable[str] | None = None) -> Any:
        from pulumi import automation as auto

        stack = self.stack()
        names = sorted(set(machines))
        if self.kind == "local":
            cfg = local_stack_config(self.endpoint, names, self.machines_dir)
        else:
            cfg = stack_config(self.endpoint, names, specs)
            if "cloudpilot:machineSpecs" not in cfg:
                with contextlib.suppress(Exception):  # an earlier apply's specs: not needed
                    stack.remove_config("cloudpilot:machineSpecs")
        try:
            stack.set_all_config({k: auto.ConfigValue(v) for k, v in cfg.items()})
        except auto.errors.CommandError as e:
            raise DriverError(f"configuring stack {self.name}: {error_line(e)}") from None
        stack.workspace.program = self._program(names, specs, new)
        return stack

    # what a killed engine leaves behind ------------------------------------------------------
    def _lock_files(self) -> list[Path]:
        """The stack's lock files (file backend only)."""
        if not self.backend_url.startswith("file://"):
            return []
        locks = Path(self.backend_url[len("file://"):]) / ".pulumi" / "locks"
        return sorted(p for p in locks.glob("**/*.json") if p.parent.name == self.name)

    def _clear_stale_lock(self) -> None:
        """Remove the lock of an update whose engine was killed (this host, its process
        gone); a lock held by a live update: StackLocked, saying whose it is."""
        for path in self._lock_files():
            try:
                lock = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            pid, host = int(lock.get("pid") or 0), lock.get("hostname")
            if host == socket.gethostname() and pid and not _alive(pid):
                log.warning("endpoint %s: removing the lock of a killed update (pid %d, %s)",
                            self.name, pid, lock.get("timestamp"))
                self._repair_checkpoint()
                path.unlink(missing_ok=True)
            else:
                raise StackLocked(f"stack {self.name} is locked by another update (pid {pid} "
                                  f"on {host}, since {lock.get('timestamp')}); it is retried "
                                  "when that update ends")

    def _repair_checkpoint(self) -> None:
        """A killed engine may leave the checkpoint's metadata file empty (the file backend
        writes it in place; the engine then fails with `failed to load checkpoint: EOF`) and
        its temporary files: remove them (no metadata is what a new stack has). The
        checkpoint itself is replaced atomically, so it is whole."""
        stacks = Path(self.backend_url[len("file://"):]) / ".pulumi" / "stacks" / PROJECT
        for p in stacks.glob(f"{self.name}.json*"):
            empty_attrs = p.name.endswith(".attrs") and p.stat().st_size == 0
            if empty_attrs or p.name.endswith(".tmp"):
                log.warning("endpoint %s: removing %s, left by a killed update", self.name,
                            p.name)
                p.unlink(missing_ok=True)

    def _clear_pending(self, stack: Any) -> bool:
        """Drop the pending operations a killed update left in the state (the engine refuses
        to run with them), then refresh so the state holds what exists. True if any."""
        from pulumi import automation as auto

        state = stack.export_stack()
        deployment = dict(state.deployment or {})
        pending = deployment.get("pending_operations") or []
        if not pending:
            return False
        what = [f"{p.get('type')} {p.get('resource', {}).get('urn', '').rsplit('::', 1)[-1]}"
                for p in pending]
        log.warning("endpoint %s: clearing %d pending operations of a killed update (%s)",
                    self.name, len(pending), ", ".join(what))
        deployment["pending_operations"] = []
        stack.import_stack(auto.Deployment(version=state.version, deployment=deployment))
        stack.refresh(color="never", on_output=lambda line: log.debug("%s", line))
        return True

    def recover(self) -> Any:
        """The stack, cleared of what a killed engine left (its lock, its pending
        operations)."""
        from pulumi import automation as auto

        stack = self.stack()
        self._clear_stale_lock()
        try:
            self._clear_pending(stack)
        except auto.errors.ConcurrentUpdateError:
            raise StackLocked(f"another update of stack {self.name} is running") from None
        except auto.errors.CommandError as e:
            raise DriverError(f"recovering stack {self.name}: {error_line(e)}") from None
        return stack

    def cancel(self) -> bool:
        """Interrupt the engine running this endpoint's update (SIGINT: it stops after the
        steps in flight and unlocks the stack). True if one was running."""
        found = False
        self._cancelled = True
        me = os.getpid()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != me or Path(os.readlink(proc / "cwd")) != self.work:
                    continue
                os.kill(int(proc.name), signal.SIGINT)
                found = True
            except (OSError, ValueError, IndexError):
                continue
        return found

    # the driver interface ----------------------------------------------------------------------
    def observe(self) -> list[ObservedMachine] | None:
        if self._observed is None or self.clock() - self._observed_at >= self.observe_every:
            return None
        return list(self._observed)

    def refresh(self) -> None:
        from pulumi import automation as auto

        stack = self.stack()
        try:
            outputs = {k: v.value for k, v in stack.outputs().items()}
        except auto.errors.CommandError as e:
            raise DriverError(f"reading stack {self.name}: {error_line(e)}") from None
        observed = machines_from_outputs(outputs)
        if self.local is not None:  # a pilot process that ended is a machine gone
            observed = [dataclasses.replace(m, alive=self.local.running(m.name) is not None)
                        for m in observed]
        self._observed, self._observed_at = observed, self.clock()

    def close(self) -> None:
        """An `up` in progress finishes on its own (the worker's timeout cancels it)."""

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        cur, want = frozenset(current), frozenset(wanted)
        cached = self._previews.get((cur, want))
        if cached is not None:
            return cached
        diff = PlanDiff.between(self.name, cur, want)
        if diff.empty:
            return diff
        from pulumi import automation as auto

        stack = self.recover()
        stack = self._configure(want, new=diff.create)
        steps: list[Step] = []

        def on_event(ev: Any) -> None:
            pre = getattr(ev, "resource_pre_event", None)
            if pre is not None:
                steps.append(Step.from_event(pre.metadata))

        path = self.work / "preview.plan.json"
        try:
            if want:
                res = stack.preview(on_event=on_event, color="never", plan=str(path))
            else:  # destroy: no saved plan (`destroy` takes none)
                res = stack.preview_destroy(on_event=on_event, color="never")
        except auto.errors.ConcurrentUpdateError:
            raise StackLocked(f"another update of stack {self.name} is running") from None
        except auto.errors.CommandError as e:
            raise DriverError(f"preview of stack {self.name} failed: {error_line(e)}") \
                from None
        summary = {getattr(k, "value", str(k)): int(v) for k, v in res.change_summary.items()}
        out = plan_from_preview(self.kind, self.name, cur, want, steps, summary)
        engine_plan = ""
        if want and path.exists():
            engine_plan = path.read_text()
            path.unlink()
        out = dataclasses.replace(out, engine_plan=engine_plan)
        self._previews = {(cur, want): out}  # only the latest is worth keeping
        return out

    def apply(self, diff: PlanDiff, fence: Callable[[], None] = unfenced) -> ApplyResult:
        from pulumi import automation as auto

        fence()  # one update changes them all

        known = {m.name for m in self._observed or []}
        wanted = set(diff.wanted) if (diff.wanted or not diff.create) else \
            (known - set(diff.delete)) | set(diff.create)
        self._previews = {}
        self._cancelled = False
        self.recover()
        stack = self._configure(wanted, diff.specs, new=diff.create)
        path = self.work / "apply.plan.json"
        try:
            if wanted:
                plan = None
                if diff.engine_plan:  # exactly what was previewed and approved
                    path.write_text(diff.engine_plan)
                    plan = str(path)
                stack.up(color="never", plan=plan, on_output=lambda line: log.debug("%s", line))
            else:  # no machine wanted: nothing of the endpoint's stays (security group, key)
                stack.destroy(color="never", on_output=lambda line: log.debug("%s", line))
        except auto.errors.ConcurrentUpdateError:
            raise StackLocked(f"another update of stack {self.name} is running") from None
        except auto.errors.CommandError as e:
            line = error_line(e)
            if self._cancelled:
                return self._after_failure(diff, "the update was cancelled through the engine "
                                           "(it ran past apply_timeout)")
            if diff.engine_plan and _PLAN_REFUSED.search(str(e)):
                raise StalePlan(f"stale plan: stack {self.name} changed since its preview "
                                f"(the engine refused it: {line}); a new preview follows") \
                    from None
            return self._after_failure(diff, line, failing_machines(str(e), diff.create))
        finally:
            path.unlink(missing_ok=True)
            self._observed = None  # re-read the outputs
        self.refresh()
        exists = {m.name for m in self.observe() or ()}
        errors = {n: "not in the stack's outputs after up" for n in diff.create
                  if n not in exists}
        return ApplyResult(tuple(n for n in diff.create if n in exists),
                           tuple(n for n in diff.delete if n not in exists), errors)

    def drift(self) -> str | None:
        """What changed in the world behind the stack's back (a refreshing preview that
        expects no changes), or None when nothing did."""
        from pulumi import automation as auto

        stack = self.recover()
        wanted = [m.name for m in self._observed or ()] if self._observed is not None else \
            sorted(machines_in_state(self.kind, stack.export_stack().deployment or {}))
        stack = self._configure(wanted, new=())
        steps: list[Step] = []

        def on_event(ev: Any) -> None:
            pre = getattr(ev, "resource_pre_event", None)
            if pre is not None and getattr(pre.metadata.op, "value", "") != "same":
                steps.append(Step.from_event(pre.metadata))

        try:
            stack.preview(color="never", refresh=True, expect_no_changes=True,
                          on_event=on_event)
        except auto.errors.ConcurrentUpdateError:
            raise StackLocked(f"another update of stack {self.name} is running") from None
        except auto.errors.CommandError as e:
            if not steps:
                raise DriverError(f"drift check of stack {self.name} failed: "
                                  f"{error_line(e)}") from None
        if not steps:
            return None
        return "; ".join(f"{s.op} {s.name}" for s in steps[:20])

    def _after_failure(self, diff: PlanDiff, message: str,
                       failing: Iterable[str] = ()) -> ApplyResult:
        """`up` failed part-way: what exists is what the stack's state now holds. Of the
        machines not created, those the output names as `failing` get the error; the others
        were not tried (NOT_TRIED), when any is named."""
        try:
            state = self.stack().export_stack()
            exists = machines_in_state(self.kind, state.deployment or {})
        except Exception as e:  # cannot tell: assume nothing changed
            log.warning("endpoint %s: reading the stack state failed: %s", self.name, e)
            exists = set(diff.delete)
        created = tuple(n for n in diff.create if n in exists)
        deleted = tuple(n for n in diff.delete if n not in exists)
        failing = set(failing)
        errors = {n: message if not failing or n in failing else
                  f"{NOT_TRIED}the update stopped at {', '.join(sorted(failing))}"
                  for n in diff.create if n not in exists}
        errors.update({n: message for n in diff.delete if n in exists})
        if not errors:  # every machine is as planned, but the update still failed
            errors = {"(stack)": message}
        return ApplyResult(created, deleted, errors)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
