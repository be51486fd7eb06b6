"""The Pulumi driver: an AWS or OpenStack endpoint's machines are one Pulumi stack.

- One stack per endpoint (named after it), through the Automation API's LocalWorkspace with a
  local file backend under `data_dir/pulumi/state` (no login to any service) and the
  passphrase secrets provider (PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE).
- The program is stacks/aws or stacks/openstack, run inline. Its config is the endpoint's TOML
  section plus the set of *named* machines (`stack_config`). Each machine's user-data (it
  holds the endpoint's pilot token) is handed to the inline program in-process and becomes a
  Pulumi secret there, so it is never on a command line nor in the stack's config file.
- plan = `preview` with the new set of named machines, apply = `up` (or `destroy` when no
  machine is wanted), refresh = read the stack's `machines` output; observe = what it last
  read (None when that is older than `observe_every` seconds: the endpoint's worker then
  refreshes it; apply re-reads it too).

Assumptions, as the Driver protocol says: apply returns when `up` is done (the machines then
boot and their pilots register) and runs in the endpoint's worker thread, never in the loop's
tick; it is idempotent per machine name (the stack declares the wanted set). Errors are raised
as DriverError with one clear line; the loop turns them into endpoint state and a back-off. A
failed `up` reports, per machine, what the stack state says exists, so the controller's view
of its machines is never lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from controller.config.settings import EndpointConfig
from controller.domain.plans import PlanDiff
from controller.drivers import contextualization
from controller.drivers.base import ApplyResult, ObservedMachine
from controller.errors import DriverError, DriverSetupError

log = logging.getLogger("cloudpilot.pulumi")

PROJECT = "cloudpilot"
INSTANCE_TYPES = {"aws": "aws:ec2/instance:Instance",
                  "openstack": "openstack:compute/instance:Instance"}
PROVIDER_PACKAGES = {"aws": "pulumi_aws", "openstack": "pulumi_openstack"}
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")


def missing_cli_message(kind: str) -> str:
    return (f"the pulumi CLI is not installed: install it (curl -fsSL https://get.pulumi.com | sh, "
            f"then put ~/.pulumi/bin on the controller's PATH) and the {kind} provider plugin "
            f"(pulumi plugin install resource {kind})")


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


def stack_config(endpoint: EndpointConfig, machines: Iterable[str],
                 specs: Mapping[str, Spec] | None = None) -> dict[str, str]:
    """The stack's config (not secret): the endpoint's cloud section, the named machines and,
    on priced endpoints, each new machine's type, zone and market."""
    cloud = endpoint.cloud()
    if cloud is None:
        raise DriverSetupError(f"endpoint {endpoint.name} has no cloud section")
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
    if endpoint.aws is not None:
        a = endpoint.aws
        cfg.update({
            "aws:region": a.region, "ami": a.ami, "instanceType": a.instance_type,
            "subnetId": a.subnet_id, "availabilityZone": a.availability_zone,
            "subnets": json.dumps(a.subnets, sort_keys=True) if a.subnets else None,
            "vpcId": a.vpc_id, "spot": "true" if a.spot else "false",
            "spotMaxPrice": None if a.spot_max_price is None else f"{a.spot_max_price:g}",
            "rootVolumeGb": a.root_volume_gb,
        })
    if endpoint.openstack is not None:
        o = endpoint.openstack
        cfg.update({
            "openstack:cloud": o.cloud, "openstack:region": o.region, "flavor": o.flavor,
            "image": o.image, "network": o.network, "floatingIpPool": o.floating_ip_pool,
            "availabilityZone": o.availability_zone,
        })
    return {(k if ":" in k else f"{PROJECT}:{k}"): str(v) for k, v in cfg.items()
            if v is not None}


@dataclass(frozen=True)
class Step:
    """One resource step of a preview: op (create, delete, replace, update, same...), the
    resource's type token and its logical name."""

    op: str
    type: str
    name: str

    @classmethod
    def from_urn(cls, op: str, type_: str, urn: str) -> Step:
        return cls(op, type_, urn.rsplit("::", 1)[-1])


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
        lines.append(f"  {_OP_MARK.get(s.op, s.op)} {s.type} {s.name}")
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


def error_line(e: BaseException) -> str:
    """The useful part of a Pulumi error (what follows its `error:` marks, without the
    "update failed" and "N errors occurred" lines), not its whole output."""
    text = str(e)
    found = []
    for ln in text.splitlines():
        m = re.search(r"\berror: (.*)", ln)
        msg = m.group(1).strip() if m else ""
        if msg and not re.fullmatch(r"(update|preview|destroy) failed|\d+ errors? occurred:?",
                                    msg):
            found.append(msg)
    line = " / ".join(dict.fromkeys(found)) or next(
        (ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return line[:400]


# the driver -------------------------------------------------------------------------------------
class PulumiDriver:
    def __init__(self, endpoint: EndpointConfig, data_dir: Path, controller_url: str,
                 token_for: Callable[[str], str], observe_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if endpoint.driver not in INSTANCE_TYPES:
            raise DriverSetupError(f"endpoint {endpoint.name}: the Pulumi driver is for aws "
                                   "and openstack endpoints")
        self.name = endpoint.name
        self.kind = endpoint.driver
        self.endpoint = endpoint
        self.root = data_dir / "pulumi"
        self.controller_url = controller_url
        self.token_for = token_for  # each machine's one-time bootstrap token
        self.observe_every = observe_every
        self.clock = clock
        self._stack: Any = None
        self._observed: list[ObservedMachine] | None = None
        self._observed_at = 0.0
        self._previews: dict[tuple[frozenset[str], frozenset[str]], PlanDiff] = {}

    # set-up --------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What every pulumi command of this endpoint runs with."""
        if not any(os.environ.get(v) for v in PASSPHRASE_VARS):
            raise DriverSetupError(
                "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) for the "
                "controller: it encrypts the stack's secrets (the pilot token in user-data)")
        return {"PULUMI_BACKEND_URL": f"file://{self.root / 'state'}",
                "PULUMI_SKIP_UPDATE_CHECK": "true"}

    def user_data(self, machines: Iterable[str],
                  specs: Mapping[str, Spec] | None = None) -> dict[str, str]:
        specs = specs or {}
        return {m: contextualization.user_data(self.endpoint, self.controller_url,
                                               self.token_for(m), m, specs.get(m))
                for m in machines}

    def _program(self, machines: Iterable[str],
                 specs: Mapping[str, Spec] | None = None) -> Callable[[], None]:
        data = self.user_data(machines, specs)
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
        try:
            cmd = auto.PulumiCommand()
        except FileNotFoundError:  # the Automation API runs `pulumi version` first
            raise DriverSetupError(missing_cli_message(self.kind)) from None
        except auto.errors.InvalidVersionError as e:
            raise DriverSetupError(f"the pulumi CLI is too old: {e}") from None
        env = self.env()
        work = self.root / "work" / self.name
        for d in (self.root / "state", work):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        opts = auto.LocalWorkspaceOptions(
            work_dir=str(work), env_vars=env, secrets_provider="passphrase",
            pulumi_command=cmd,
            project_settings=auto.ProjectSettings(
                name=PROJECT, runtime="python",
                backend=auto.ProjectBackend(url=env["PULUMI_BACKEND_URL"])))
        try:
            stack = auto.create_or_select_stack(stack_name(self.name), project_name=PROJECT,
                                                program=self._program(()), opts=opts)
            version = metadata.version(PROVIDER_PACKAGES[self.kind].replace("_", "-"))
            stack.workspace.install_plugin(self.kind, f"v{version}")
        except FileNotFoundError:
            raise DriverSetupError(missing_cli_message(self.kind)) from None
        except auto.errors.CommandError as e:
            raise DriverSetupError(f"could not set up stack {self.name}: {error_line(e)}") \
                from None
        self._stack = stack
        return stack

    def _configure(self, machines: Iterable[str],
                   specs: Mapping[str, Spec] | None = None) -> Any:
        from pulumi import automation as auto

        stack = self.stack()
        names = sorted(set(machines))
        cfg = stack_config(self.endpoint, names, specs)
        if "cloudpilot:machineSpecs" not in cfg:
            with contextlib.suppress(Exception):  # an earlier apply's specs: no longer needed
                stack.remove_config("cloudpilot:machineSpecs")
        stack.set_all_config({k: auto.ConfigValue(v) for k, v in cfg.items()})
        stack.workspace.program = self._program(names, specs)
        return stack

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
        self._observed, self._observed_at = machines_from_outputs(outputs), self.clock()

    def close(self) -> None:
        """An `up` in progress finishes on its own (cancelling one leaves the stack locked)."""

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        cur, want = frozenset(current), frozenset(wanted)
        cached = self._previews.get((cur, want))
        if cached is not None:
            return cached
        diff = PlanDiff.between(self.name, cur, want)
        if diff.empty:
            return diff
        from pulumi import automation as auto

        stack = self._configure(want)
        steps: list[Step] = []

        def on_event(ev: Any) -> None:
            pre = getattr(ev, "resource_pre_event", None)
            if pre is not None:
                m = pre.metadata
                steps.append(Step.from_urn(getattr(m.op, "value", str(m.op)), m.type, m.urn))

        try:
            res = stack.preview(on_event=on_event, color="never")
        except auto.errors.CommandError as e:
            raise DriverError(f"preview of stack {self.name} failed: {error_line(e)}") \
                from None
        summary = {getattr(k, "value", str(k)): int(v) for k, v in res.change_summary.items()}
        out = plan_from_preview(self.kind, self.name, cur, want, steps, summary)
        self._previews = {(cur, want): out}  # only the latest is worth keeping
        return out

    def apply(self, diff: PlanDiff) -> ApplyResult:
        from pulumi import automation as auto

        known = {m.name for m in self._observed or []}
        wanted = set(diff.wanted) if (diff.wanted or not diff.create) else \
            (known - set(diff.delete)) | set(diff.create)
        self._previews = {}
        stack = self._configure(wanted, diff.specs)
        try:
            if wanted:
                stack.up(color="never", on_output=lambda line: log.debug("%s", line))
            else:  # no machine wanted: nothing of the endpoint's stays (security group, key)
                stack.destroy(color="never", on_output=lambda line: log.debug("%s", line))
        except auto.errors.ConcurrentUpdateError:
            raise DriverError(f"another update of stack {self.name} is running") from None
        except auto.errors.CommandError as e:
            return self._after_failure(diff, error_line(e))
        finally:
            self._observed = None  # re-read the outputs
        self.refresh()
        exists = {m.name for m in self.observe() or ()}
        errors = {n: "not in the stack's outputs after up" for n in diff.create
                  if n not in exists}
        return ApplyResult(tuple(n for n in diff.create if n in exists),
                           tuple(n for n in diff.delete if n not in exists), errors)

    def _after_failure(self, diff: PlanDiff, message: str) -> ApplyResult:
        """`up` failed part-way: what exists is what the stack's state now holds."""
        try:
            state = self.stack().export_stack()
            exists = machines_in_state(self.kind, state.deployment or {})
        except Exception as e:  # cannot tell: assume nothing changed
            log.warning("endpoint %s: reading the stack state failed: %s", self.name, e)
            exists = set(diff.delete)
        created = tuple(n for n in diff.create if n in exists)
        deleted = tuple(n for n in diff.delete if n not in exists)
        errors = {n: message for n in diff.create if n not in exists}
        errors.update({n: message for n in diff.delete if n in exists})
        if not errors:  # every machine is as planned, but the update still failed
            errors = {"(stack)": message}
        return ApplyResult(created, deleted, errors)
