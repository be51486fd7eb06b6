"""One typed settings object: a TOML file, overridden by CLOUDPILOT_* environment variables.

Relative paths in the file are taken relative to the file's folder.

`Settings` holds the controller's own settings and its `endpoints`, each one the model of its
kind, chosen by its `driver`: `LocalEndpointConfig`, `SshEndpointConfig`, `SlurmEndpointConfig`,
`SgeEndpointConfig`, `AwsEndpointConfig`, `OpenStackEndpointConfig`, or `PluginEndpointConfig`
for a kind a plugin adds. They share `EndpointConfig` (what every endpoint has) and, for those
that start machines by name, `PricedEndpointConfig`; each setting and its default is written
once, in the model of the kinds that have it. An option a kind does not have is an error that
names the driver and the key (`config_error`). Build one endpoint's settings in code with
`endpoint_config(...)`."""

from __future__ import annotations

import os
import re
import tomllib
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from controller.config.clouds import AwsConfig, OpenStackConfig
from controller.config.database import is_postgres
from controller.domain.batch import BatchSpec
from controller.domain.credentials import DEFAULT_MAX_MACHINE_AGE, pilot_credential_lifetime
from controller.domain.matching import SlotOffer
from controller.domain.plans import ApprovalPolicy
from controller.domain.pricing import Market, Offer
from controller.domain.scheduling import EndpointSpec
from controller.errors import ConfigError

# settings renamed: the old name is still read, with a warning, for one release
RENAMED = {"stalled_after": "lease"}


def renamed(data: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`data` with each old setting name (in it, or as a CLOUDPILOT_* variable) moved to its
    new name, warning once for each; the new name wins where both are given."""
    env = os.environ if environ is None else environ
    out = dict(data)
    for old, new in RENAMED.items():
        var = f"CLOUDPILOT_{old.upper()}"
        for given, value in ((old, out.pop(old, None)), (var, env.get(var))):
            if value is None:
                continue
            now = new if given == old else f"CLOUDPILOT_{new.upper()}"
            warnings.warn(f"setting {given} is now called {now}; the old name goes in the "
                          "next release", FutureWarning, stacklevel=3)
            out.setdefault(new, value)
    return out


def repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    seen = Counter(names)
    return sorted(n for n, k in seen.items() if k > 1)


class SshHostConfig(BaseModel):
    """One host of an SSH endpoint, as listed in the config (more can join at run time)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")
    address: str = Field(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}$", description="IP or DNS name")
    port: int = Field(22, ge=1, le=65535)
    slots: int | None = Field(None, ge=1, le=256, description="pilot slots (endpoint's if unset)")
    cores: int | None = Field(None, ge=1, le=1024, description="cores offered (facts if unset)")
    memory_mb: int | None = Field(None, ge=64, description="memory offered (facts if unset)")


class SshConfig(BaseModel):
    """How the controller reaches an SSH endpoint's hosts: one user and one private key for
    all, host keys pinned in a known_hosts file."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    key: Path = Field(description="the private key shared by all hosts")
    known_hosts: Path | None = Field(None, description="pinned host keys (OpenSSH format)")
    trust_on_first_use: bool = Field(False, description="accept and record unknown host keys")
    hosts: list[SshHostConfig] = Field(default_factory=list)
    python: str = Field("/usr/bin/python3", description="the hosts' Python (3.11+)")
    remote_dir: str = Field("~/.cloudpilot", description="pilots live in REMOTE_DIR/MACHINE")
    connect_timeout: int = Field(10, ge=1, le=300)
    run_timeout: float = Field(300.0, gt=0, description="longest Ansible run (s)")
    stop_grace: int = Field(20, ge=0, le=3600, description="SIGTERM to SIGKILL (s)")
    retry_after: float = Field(10.0, gt=0, description="first retry of a failed host (s)")
    retry_max: float = Field(600.0, gt=0, description="longest wait between retries (s)")

    @model_validator(mode="after")
    def _unique_hosts(self) -> SshConfig:
        dup = repeated(h.name for h in self.hosts)
        if dup:
            raise ValueError(f"host names must be unique: {dup}")
        return self


SLURM_NAME = r"^[A-Za-z0-9_.,+-]{1,64}$"
SGE_NAME = r"^[A-Za-z0-9_.@*-]{1,64}$"


class BatchSiteConfig(BaseModel):
    """A batch-system site reached over SSH (driver = "slurm" or "sge"): its login node,
    reached as an SSH endpoint reaches its hosts, and the settings common to every batch
    system. Cores, memory and slots per pilot are the endpoint's `cores`, `memory_mb` and
    `slots`."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}$",
                         description="the login node: IP or DNS name")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    key: Path = Field(description="the private key of that user")
    known_hosts: Path | None = Field(None, description="the login node's pinned host key")
    trust_on_first_use: bool = Field(False, description="accept and record an unknown key")
    connect_timeout: int = Field(10, ge=1, le=300)
    command_timeout: float = Field(60.0, gt=0, description="longest batch command (s)")
    python: str = Field("python3", pattern=r"^[A-Za-z0-9_./-]{1,200}$",
                        description="the compute nodes' Python (3.11+)")
    remote_dir: str = Field("~/.cloudpilot", pattern=r"^[A-Za-z0-9_./~-]{1,200}$",
                            description="shared by login and compute nodes: pilots live in "
                            "REMOTE_DIR/ENDPOINT/MACHINE")
    wall_time: int = Field(3600, ge=60, le=366 * 86400, description="per pilot job (s; "
                           "Slurm counts whole minutes; Grid Engine's h_rt)")
    max_queued: int = Field(4, ge=1, description="pilot jobs pending in the batch system "
                            "at once")
    pending_timeout: float = Field(600.0, gt=0, description="cancel a pilot job pending "
                                   "longer (s) and back off")
    pending_backoff: float = Field(300.0, ge=0, description="no new pilot jobs this long "
                                   "after one was cancelled for pending too long (s)")
    time_margin: int = Field(60, ge=0, description="of a pilot's time left, kept for "
                             "uploading output and reporting (s)")

    @model_validator(mode="after")
    def _margin(self) -> BatchSiteConfig:
        if self.time_margin >= self.wall_time:
            raise ValueError("time_margin must be shorter than wall_time")
        return self

    @property
    def max_runtime(self) -> int:
        """The longest job a pilot of this cluster can take when it starts."""
        return self.wall_time - self.time_margin


def _command_option(command: str, pattern: str, form: str) -> AfterValidator:
    """A check that a string is one option of a batch system's submit command, written so
    that no shell reads more into it."""
    def check(o: str) -> str:
        if not re.fullmatch(pattern, o):
            raise ValueError(f"{command} option {o!r}: write it as {form}")
        return o

    return AfterValidator(check)


SbatchOption = Annotated[str, _command_option(
    "sbatch", r"--[a-z][a-z-]*(=[^\s'\"\\;&|`$<>]+)?",
    "--name or --name=value (no spaces, quotes or shell characters)")]
QsubOption = Annotated[str, _command_option(
    "qsub", r"-[a-z][A-Za-z_]*( [^\s'\"\\;&|`$<>]+)?",
    "-name or -name value (one value, no quotes or shell characters)")]


class SlurmConfig(BatchSiteConfig):
    """A Slurm cluster (driver = "slurm"): what each pilot job asks sbatch for."""

    partition: str | None = Field(None, pattern=SLURM_NAME)
    account: str | None = Field(None, pattern=SLURM_NAME)
    qos: str | None = Field(None, pattern=SLURM_NAME)
    sbatch_options: list[SbatchOption] = Field(default_factory=list, description="more sbatch "
                                      "options, each '--name' or '--name=value'")


class SgeConfig(BatchSiteConfig):
    """A (Son of) Grid Engine cluster (driver = "sge"): what each pilot job asks qsub for.
    A pilot of more than one core asks for `cores` slots of `parallel_environment`."""

    queue: str | None = Field(None, pattern=SGE_NAME, description="qsub -q")
    project: str | None = Field(None, pattern=SGE_NAME, description="qsub -P")
    parallel_environment: str = Field("smp", pattern=SGE_NAME, description="qsub -pe NAME "
                                      "CORES for pilots of more than one core")
    memory_resource: str | None = Field(None, pattern=r"^[A-Za-z0-9_]{1,64}$",
                                        description="the complex a pilot asks its memory of "
                                        "per slot (e.g. h_vmem, mem_free; none by default)")
    qsub_options: list[QsubOption] = Field(default_factory=list, description="more qsub options, "
                                    "each '-name' or '-name value' (e.g. '-l arch=lx-amd64')")
    accounting_file: str = Field("$SGE_ROOT/${SGE_CELL:-default}/common/accounting",
                                 pattern=r"^[A-Za-z0-9_./~${}:-]{1,300}$",
                                 description="where ended jobs are read (accounting(5)), as "
                                 "the login node's shell sees it")


def _both_markets() -> list[Market]:
    return ["spot", "on-demand"]


class MachineTypeConfig(BaseModel):
    """One machine type a priced endpoint may start, in each of its zones and markets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="e.g. c5.xlarge")
    cores: int = Field(ge=1, le=1024)
    memory_mb: int = Field(ge=64)
    on_demand_price: float = Field(gt=0, description="USD per hour")
    zones: list[str] = Field(min_length=1)
    markets: list[Market] = Field(default_factory=_both_markets, min_length=1)
    max_price: float | None = Field(None, gt=0, description="spot: most we pay (USD/h)")
    max_price_factor: float = Field(1.0, gt=0, description="spot: max price as a factor of "
                                    "the on-demand price, when max_price is not given")
    slots: int | None = Field(None, ge=1, description="pilot slots (default: one per core)")

    def offers(self) -> list[Offer]:
        bid = self.max_price or round(self.on_demand_price * self.max_price_factor, 6)
        return [Offer(self.name, z, m, self.cores, self.memory_mb, self.on_demand_price,
                      bid if m == "spot" else None, self.slots)
                for z in self.zones for m in self.markets]


class PriceConfig(BaseModel):
    """Where spot prices come from: `aws` (DescribeSpotPriceHistory) or `file` (a TSV)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["aws", "file"]
    path: str | None = Field(None, description="file: the TSV (.xz) history")
    product: str = "Linux/UNIX"
    region: str = "eu-west-1"
    endpoint_url: str | None = Field(None, description="aws: another EC2 API endpoint")
    refresh: float = Field(300.0, gt=0, description="aws: seconds between refreshes")
    start: str | None = Field(None, description="file: history time the replay starts at "
                              "(ISO 8601; default: the file's first)")

    @model_validator(mode="after")
    def _file_needs_path(self) -> PriceConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("a file price source needs a path")
        return self


# --- endpoints: one model per kind (`driver`) ---------------------------------------------
# EndpointConfig holds what every kind has; PricedEndpointConfig adds what endpoints that start
# machines of several types, zones and markets have (local, aws, openstack); each kind's model
# adds only its own options. `Settings.endpoints` picks the model by `driver`, so an option of
# another kind is refused by pydantic itself, naming the kind and the key.
class EndpointConfig(BaseModel):
    """One endpoint: where machines come from (driver) and what each machine offers. The part
    every kind of endpoint has; build one with `endpoint_config(...)`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    driver: str = Field("local", description="the kind of endpoint: local, ssh, slurm, sge, "
                        "aws, openstack, or one a plugin adds")
    cores: int = Field(2, ge=1, le=1024, description="cores per machine")
    memory_mb: int = Field(2048, ge=64, description="memory per machine")
    tags: list[str] = Field(default_factory=lambda: ["linux"])
    platform: str | None = Field(None, max_length=64, description="the machines' platform "
                                 "(e.g. el9): jobs that list platforms need one of theirs")
    required_tags: list[str] = Field(default_factory=list, description="tags a job must ask "
                                     "for to run here (a GPU endpoint: [\"gpu\"])")
    slots: int = Field(2, ge=1, le=256, description="pilot slots per machine")
    max_machines: int = Field(4, ge=0)
    max_starts_per_cycle: int = Field(2, ge=1)
    idle_timeout: float = Field(30.0, gt=0, description="stop machines idle this long (s)")
    boot_timeout: float = Field(120.0, gt=0)
    lost_after: float = Field(60.0, gt=0, description="a pilot silent this long is lost (s)")
    heartbeat_interval: float = Field(10.0, gt=0)
    apply_timeout: float = Field(1800.0, gt=0, description="longest apply (a Pulumi up, an "
                                 "Ansible run) before it counts as failed (s)")
    max_runtime: int | None = Field(None, ge=1, description="longest job this endpoint runs")
    reserve_limit: float = Field(300.0, ge=0, description="hold a machine's cores for a wide "
                                 "job only if its running jobs free them within this (s)")
    # the matcher reads it for every kind, the scheduler of the priced ones too
    strand_limit: float | None = Field(None, ge=0, description="a job goes on a machine "
                                       "running jobs only if the machine's other cores x how "
                                       "long it should outlive its jobs stay within this "
                                       "(core-seconds; default: no limit)")
    isolation: Literal["bwrap", "user", "none"] = Field(
        "bwrap", description="how pilots sandbox each payload: bwrap (bubblewrap: it sees "
        "only its job directory and the system's read-only files), user (a dedicated "
        "unprivileged user; the pilot must run as root), none (no sandbox: only when asked)")
    # --- machine lifetime and pilot credentials (issue 26) ------------------------------
    max_machine_age: float = Field(
        DEFAULT_MAX_MACHINE_AGE, gt=0, description="a cloud machine powers itself off (and "
        "so terminates) this long after boot, controller or not (s); its pilots' credentials "
        "live twice as long from their last renewal")
    orphan_timeout: float = Field(
        600.0, gt=0, description="a pilot that cannot reach the controller this long leaves "
        "(at once when idle, else when its jobs' leases run out) (s)")
    # plans: applied automatically, under a threshold, or after an operator approves them
    auto_apply: bool | None = Field(
        None, description="apply every plan automatically (default: true for local and ssh, "
        "false for clouds)")
    auto_apply_max_new: int | None = Field(
        None, ge=0, description="apply plans automatically up to this many new machines")
    auto_apply_max_cost_per_hour: float | None = Field(
        None, ge=0, description="... and up to this added cost per hour")
    cost_per_hour: float | None = Field(
        None, ge=0, description="what one machine costs per hour (default: a spot max price)")

    # plans of this kind are applied automatically unless the config says otherwise
    AUTO_APPLY: ClassVar[bool] = True

    @model_validator(mode="after")
    def _auto_apply(self) -> EndpointConfig:
        if self.auto_apply is None:
            self.auto_apply = self.AUTO_APPLY
        return self

    @property
    def batch(self) -> BatchSiteConfig | None:
        """The batch-system section of a batch endpoint (slurm, sge), else None."""
        return None

    def cloud(self) -> AwsConfig | OpenStackConfig | None:
        """The cloud section of a cloud endpoint (aws, openstack), else None."""
        return None

    def offers(self) -> tuple[Offer, ...]:
        """The machine types x zones x markets it may start (none: every machine alike)."""
        return ()

    def machine_cost_per_hour(self) -> float | None:
        return self.cost_per_hour

    def approval_policy(self) -> ApprovalPolicy:
        return ApprovalPolicy(bool(self.auto_apply), self.auto_apply_max_new,
                              self.auto_apply_max_cost_per_hour, self.machine_cost_per_hour())

    def shape(self) -> SlotOffer:
        return SlotOffer(self.name, self.cores, self.memory_mb, frozenset(self.tags),
                         self.longest_job(), platform=self.platform,
                         required_tags=frozenset(self.required_tags))

    def credential_lifetime(self) -> float:
        """How long its pilots' own credentials live from their last renewal."""
        return pilot_credential_lifetime(self.max_machine_age)

    def longest_job(self) -> int | None:
        """The longest max_runtime a job may have here: the endpoint's limit, and on a batch
        system what a fresh pilot's wall time leaves."""
        limits = [x for x in (self.max_runtime,
                              self.batch.max_runtime if self.batch else None) if x is not None]
        return min(limits) if limits else None

    def spec_options(self) -> dict[str, Any]:
        """The scheduler's options beyond what every kind has (see PricedEndpointConfig)."""
        return {}

    def spec(self) -> EndpointSpec:
        return EndpointSpec(
            name=self.name,
            shape=self.shape(),
            slots=self.slots,
            max_machines=self.max_machines,
            max_starts_per_cycle=self.max_starts_per_cycle,
            idle_timeout=self.idle_timeout,
            boot_timeout=self.boot_timeout,
            lost_after=self.lost_after,
            reserve_limit=self.reserve_limit,
            **self.spec_options(),
        )


class SshEndpointConfig(EndpointConfig):
    """driver = "ssh": a pool of hosts reached over SSH, pilots deployed with Ansible."""

    driver: Literal["ssh"] = "ssh"
    ssh: SshConfig = Field(description="driver ssh: hosts, user, key, host keys")


class BatchEndpointConfig(EndpointConfig):
    """A batch-system site (slurm, sge): pilots are batch jobs on its compute nodes."""

    @property
    def batch(self) -> BatchSiteConfig:
        section: BatchSiteConfig = getattr(self, self.driver)  # [endpoints.slurm], ...sge]
        return section

    def batch_spec(self) -> BatchSpec:
        """A batch endpoint's settings as domain/batch.py's decision reads them."""
        b = self.batch
        return BatchSpec(self.name, self.shape(), self.slots, self.max_machines, b.max_queued,
                         self.max_starts_per_cycle, b.pending_timeout, b.pending_backoff,
                         self.boot_timeout, self.lost_after)


class SlurmEndpointConfig(BatchEndpointConfig):
    """driver = "slurm"."""

    driver: Literal["slurm"] = "slurm"
    slurm: SlurmConfig = Field(description="driver slurm: login node, partition, wall time, "
                               "queue limits")


class SgeEndpointConfig(BatchEndpointConfig):
    """driver = "sge"."""

    driver: Literal["sge"] = "sge"
    sge: SgeConfig = Field(description="driver sge: login node, queue, project, parallel "
                           "environment, h_rt, queue limits")

class PricedEndpointConfig(EndpointConfig):
    """What endpoints that start machines by name have (local, aws, openstack): several
    machine types x zones, spot or on demand, and how the scheduler packs and drains them."""

    machine_types: list[MachineTypeConfig] = Field(default_factory=list)
    prices: PriceConfig | None = None
    max_spend_per_hour: float | None = Field(None, gt=0, description="USD per hour")
    diversity: float = Field(0.1, ge=0, le=10, description="preference for pools (type x "
                             "zone) that hold less of the fleet; 0 = cheapest only")
    drain_below: float = Field(0.25, ge=0, le=1, description="consolidation: a machine using "
                               "at most this share of its cores may drain")
    drain_budget: float = Field(0.0, ge=0, le=1, description="consolidation: at most this "
                                "share of the live machines drains at once (0: never)")
    size_tolerance: float = Field(0.05, ge=0, le=1, description="new machines: the smallest "
                                  "type within this share of the best price per used core")
    headroom: float = Field(0.0, ge=0, le=1, description="free cores kept (share of the live "
                            "machines' cores) for work that arrives before a machine boots")
    extend_limit: float | None = Field(None, ge=0, description="a job goes on a machine "
                                       "running jobs only if it should end at most this "
                                       "long (s) after them (default: no limit)")
    # --- issue 24: when the cloud says no -------------------------------------------------
    refusal_ttl: float = Field(180.0, gt=0, description="an offer (type x zone x market) a "
                               "cloud refused for capacity or quota is not tried for this "
                               "long (s), doubled while it keeps being refused")
    refusal_ttl_max: float = Field(3600.0, gt=0, description="the longest such block (s)")
    fallback_after: float | None = Field(
        None, ge=0, description="the fallback ladder: a job that has waited this long (s) for "
        "a spot machine may get an on-demand one (a job's own fallback_after wins; default: "
        "no ladder, the cheapest market at once)")
    wait_cost: float = Field(
        0.05, ge=0, description="USD an hour's wait of one core of waiting work costs: an "
        "offer whose machines boot slowly, or whose pilots never register (measured over the "
        "last day), costs that much more per used core-hour of its expected delay")
    # --- end issue 24 ----------------------------------------------------------------------

    @model_validator(mode="after")
    def _types_need_prices(self) -> PricedEndpointConfig:
        spot = any("spot" in t.markets for t in self.machine_types)
        if spot and self.prices is None:
            raise ValueError("machine types on spot need a price source ([endpoints.prices])")
        if repeated(t.name for t in self.machine_types):
            raise ValueError("machine type names must be unique")
        return self

    def offers(self) -> tuple[Offer, ...]:
        return tuple(o for t in self.machine_types for o in t.offers())

    # its options the scheduler reads (EndpointSpec's fields of the same names)
    SPEC_OPTIONS: ClassVar[tuple[str, ...]] = (
        "max_spend_per_hour", "diversity", "drain_below", "drain_budget", "extend_limit",
        "strand_limit", "size_tolerance", "headroom", "fallback_after", "wait_cost")

    def spec_options(self) -> dict[str, Any]:
        return {"offers": self.offers(), **{k: getattr(self, k) for k in self.SPEC_OPTIONS}}


class LocalEndpointConfig(PricedEndpointConfig):
    """driver = "local" (the default): machines are pilot processes on this host."""

    driver: Literal["local"] = "local"
    via: Literal["direct", "pulumi"] = Field(
        "direct", description="start pilot processes directly, or through a Pulumi stack "
        "(stacks/local: the real engine, its plans and state)")
    refuse: dict[str, int] = Field(
        default_factory=dict, description="tests, demos: pools ('type/zone/market') whose "
        "launches are refused as sold out, each the first N times (0: always)")
    slow_start: float = Field(
        0.0, ge=0, le=600, description="tests, demos: a slow cloud, seconds the driver waits "
        "before it starts each machine")


class CloudEndpointConfig(PricedEndpointConfig):
    """A cloud's machines (aws, openstack), always through Pulumi, contextualized by the pilot
    they start or by an SSH endpoint."""

    AUTO_APPLY: ClassVar[bool] = False

    contextualization: Literal["pilot", "ssh"] = "pilot"
    ssh_endpoint: str | None = Field(
        None, description="ssh mode: the SSH endpoint that deploys pilots on these machines")

    @model_validator(mode="after")
    def _contextualization(self) -> CloudEndpointConfig:
        if self.contextualization == "ssh":
            cloud = self.cloud()
            assert cloud is not None
            if not (cloud.public_key or cloud.public_key_file):
                raise ValueError("contextualization = 'ssh' needs a public_key (or "
                                 "public_key_file) in the cloud section")
            if not cloud.ssh_cidr:
                raise ValueError("contextualization = 'ssh' needs ssh_cidr in the cloud "
                                 "section: who may reach the machines' port 22")
            if not self.ssh_endpoint:
                raise ValueError("contextualization = 'ssh' needs ssh_endpoint: the SSH "
                                 "endpoint that deploys pilots on these machines")
        if self.isolation == "user":
            raise ValueError("isolation = 'user' needs a pilot running as root; cloud "
                             "machines run it as the user cloudpilot: use 'bwrap'")
        return self


class AwsEndpointConfig(CloudEndpointConfig):
    """driver = "aws": EC2 machines."""

    driver: Literal["aws"] = "aws"
    aws: AwsConfig

    def cloud(self) -> AwsConfig:
        return self.aws

    def machine_cost_per_hour(self) -> float | None:
        if self.cost_per_hour is not None:
            return self.cost_per_hour
        return self.aws.spot_max_price


class OpenStackEndpointConfig(CloudEndpointConfig):
    """driver = "openstack"."""

    driver: Literal["openstack"] = "openstack"
    openstack: OpenStackConfig

    def cloud(self) -> OpenStackConfig:
        return self.openstack


class PluginEndpointConfig(EndpointConfig):
    """A kind a site's own package adds (entry point group `cloudpilot.endpoint_kinds`): its
    options go in `[endpoints.options]`, checked by the kind's own `Options` model, if any."""

    options: dict[str, Any] = Field(default_factory=dict, description="the plugin kind's "
                                    "own options")

    @field_validator("driver")
    @classmethod
    def _known_kind(cls, driver: str) -> str:
        from controller.kinds import installed  # entry points are read when first needed

        return installed(driver, ENDPOINT_KINDS)

    @model_validator(mode="after")
    def _options(self) -> PluginEndpointConfig:
        from controller.kinds import plugin_kind

        model = getattr(plugin_kind(self.driver), "Options", None)
        if model is not None:
            try:
                self.options = model.model_validate(self.options).model_dump()
            except ValidationError as e:
                raise ValueError(f"driver {self.driver!r}: " + "; ".join(
                    f"options.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                    for err in e.errors())) from None
        return self


# driver -> its settings model (a plugin kind: PluginEndpointConfig)
ENDPOINT_KINDS: dict[str, type[EndpointConfig]] = {
    "local": LocalEndpointConfig, "ssh": SshEndpointConfig, "slurm": SlurmEndpointConfig,
    "sge": SgeEndpointConfig, "aws": AwsEndpointConfig, "openstack": OpenStackEndpointConfig,
}
CLOUD_DRIVERS = ("aws", "openstack")
BATCH_DRIVERS = ("slurm", "sge")  # drivers of batch-system sites: their sections


def _kind_of(v: Any) -> str:
    driver = v.get("driver", "local") if isinstance(v, dict) else getattr(v, "driver", "local")
    return driver if driver in ENDPOINT_KINDS else "plugin"


# an endpoint's settings: the model of its kind, chosen by `driver`
AnyEndpoint = Annotated[
    Annotated[LocalEndpointConfig, Tag("local")] | Annotated[SshEndpointConfig, Tag("ssh")]
    | Annotated[SlurmEndpointConfig, Tag("slurm")] | Annotated[SgeEndpointConfig, Tag("sge")]
    | Annotated[AwsEndpointConfig, Tag("aws")]
    | Annotated[OpenStackEndpointConfig, Tag("openstack")]
    | Annotated[PluginEndpointConfig, Tag("plugin")],
    Discriminator(_kind_of)]
_ENDPOINT = TypeAdapter(AnyEndpoint)


def _one_local_endpoint() -> list[AnyEndpoint]:
    return [LocalEndpointConfig(name="local")]


def endpoint_config(**data: Any) -> EndpointConfig:
    """An endpoint's settings, as the config file's [[endpoints]] table `data` gives them:
    the model of its `driver`."""
    try:
        ep: EndpointConfig = _ENDPOINT.validate_python(data)
    except ValidationError as e:
        raise ConfigError(f"endpoint {data.get('name')}: "
                          + "; ".join(config_error(err) for err in e.errors())) from None
    return ep

def config_error(err: ErrorDetails) -> str:
    """One line for one of pydantic's errors: where (`endpoints.0.key`, without pydantic's
    kind tag) and what; an option of an endpoint that its kind does not have names the kind,
    the key and the kinds that have it."""
    loc = list(err["loc"])
    at = 2 if loc[:1] == ["endpoints"] else 0  # the kind's tag: in a Settings, or alone
    kind = str(loc.pop(at)) if len(loc) > at and loc[at] in (*ENDPOINT_KINDS, "plugin") \
        else None
    where = ".".join(map(str, loc)) or "endpoint"
    key = str(loc[at]) if kind and len(loc) == at + 1 else None
    if key and err["type"] == "extra_forbidden":
        owners = [k for k, m in ENDPOINT_KINDS.items() if key in m.model_fields]
        elsewhere = f" (drivers with it: {', '.join(owners)})" if owners else ""
        return f"{where}: driver {kind!r} has no option {key}{elsewhere}"
    if key and err["type"] == "missing":
        return f"{where}: driver {kind!r} needs an [endpoints.{key}] section"
    return f"{where}: {err['msg']}" + (f" (driver {kind!r})" if kind and kind != "plugin" else "")


def read_toml(p: Path) -> dict[str, Any]:
    """A TOML config file as a dict; a missing or malformed file is a ConfigError."""
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


class Settings(BaseSettings):
    """The controller's settings."""

    model_config = SettingsConfigDict(env_prefix="CLOUDPILOT_", extra="forbid")

    database: Path | str = Field(
        Path("cloudpilot.db"), description="the store: a SQLite file (the embedded default: one "
        "controller process), or a postgresql:// URL that several controller processes share "
        "(its password from PGPASSWORD or ~/.pgpass, not in the URL)")
    workers: int = Field(1, ge=1, le=64, description="controller processes `serve` runs on "
                         "this machine (more than one needs a postgresql:// database)")
    data_dir: Path = Path("cloudpilot-data")
    machines_dir: Path | None = Field(
        None, description="local endpoints' machine and job directories; outside data_dir "
        "(default: DATA_DIR-machines beside it)")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(None, description="URL pilots use to reach the controller")
    loop_interval: float = Field(2.0, gt=0)
    # --- issue 26: the reconcile loop's leader lease (PostgreSQL) ---------------------------
    leader_lease: float = Field(
        30.0, ge=1, description="PostgreSQL: a leader that has not checked its lock this long "
        "(frozen, or stuck) loses its session and with it the lead (s; above loop_interval "
        "and the longest tick)")
    lease: float = Field(60.0, gt=0, description="the lease of a job's attempt: a "
                                 "pilot's heartbeats renew it; a pilot that cannot renew it "
                                 "kills the payload before it runs out (s)")
    lease_margin: float = Field(10.0, ge=0, description="a silent pilot's jobs are rescheduled "
                                "only this long after their lease ran out (s)")
    max_retries: int = Field(3, ge=0, le=100)
    job_token_margin: int = Field(600, ge=0, description="job token life beyond max_runtime (s)")
    max_output_bytes: int = Field(1_048_576, ge=1024)
    max_bulk_jobs: int = Field(10_000, ge=1)
    idempotency_keep: float = Field(86_400.0, gt=0, description="how long a submission's "
                                    "Idempotency-Key answers its first jobs again (s)")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=65536,
                                   description="largest request body (413 beyond)")
    long_poll_max: float = Field(30.0, gt=0)
    fair_share_by: Literal["owner", "group"] = Field(
        "owner", description="owner: owners against each other; group: groups by their "
        "share, then the owners within a group by theirs")
    fair_share_half_life: float = Field(
        86400.0, gt=0, description="seconds after which used core-seconds count half")
    group_shares: dict[str, float] = Field(
        default_factory=dict, description="fair-share weight per group (default 1)")
    group_budgets: dict[str, float] = Field(
        default_factory=dict, description="USD per calendar month (UTC) per group: a group "
        "that has spent its budget gets no new machines started for its work until the month "
        "ends (its running jobs go on; groups not listed: no budget)")
    budget_check_interval: float = Field(
        30.0, gt=0, description="seconds between two reads of the groups' spend this month "
        "against group_budgets (the loop and the waiting jobs' reasons)")
    max_spend_per_hour: float | None = Field(None, gt=0, description="all endpoints, USD/h")
    max_machines_total: int | None = Field(None, ge=0, description="all endpoints")
    tick_retention: int = Field(2000, ge=10, description="scheduler ticks kept per endpoint")
    input_url_allow: list[str] = Field(
        default_factory=list, description="input URLs may reach these addresses (CIDRs) or "
        "host names although they are loopback, link-local, private or metadata addresses")
    # issue 22: job files (output sandboxes), input sandboxes, live output
    file_store: str | None = Field(
        None, description="where job files and input sandboxes live: a folder (default: "
        "DATA_DIR/files) or s3://bucket/prefix (an S3-compatible store; boto3 finds its "
        "credentials in the environment, ~/.aws or an instance role)")
    file_store_endpoint_url: str | None = Field(
        None, description="the S3 API's URL for a store that is not AWS's")
    file_store_region: str | None = Field(None, description="the S3 bucket's region")
    max_output_files_bytes: int = Field(100 * 1024 * 1024, ge=0, description="a job's "
                                        "output files in all, per attempt (bytes)")
    max_output_files: int = Field(100, ge=0, le=10_000, description="output files per "
                                  "attempt")
    keep_outputs_for: float = Field(30 * 86400.0, gt=0, description="job files and input "
                                    "sandboxes are deleted this long after they arrive (s)")
    owner_quota_bytes: int | None = Field(10 * 1024**3, ge=0, description="bytes of job "
                                          "files and sandboxes an owner may hold (None: no "
                                          "limit); beyond it uploads get 507")
    max_sandbox_bytes: int = Field(1024**3, ge=0, description="largest input sandbox")
    live_output_bytes: int = Field(16384, ge=0, description="of a running job's output, "
                                   "what a pilot sends per heartbeat at most (the rest is "
                                   "dropped with a mark)")
    # issue 12: logs, the dashboard and its charts
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object a line, with endpoint, job, machine, pilot")
    sample_interval: float = Field(60.0, gt=0, description="seconds between the fleet samples "
                                   "the dashboard's charts draw")
    sample_retention: float = Field(7 * 86400.0, gt=0, description="samples kept (s)")
    session_lifetime: float = Field(12 * 3600.0, gt=0, description="dashboard login (s)")
    # issue 20: the Pulumi engine
    pulumi_root: Path | None = Field(
        None, description="where the pulumi CLI is installed (ROOT/bin/pulumi; `make pulumi` "
        "builds it into .tools/pulumi-VERSION); default: the one on PATH, else the build")
    pulumi_backend_url: str | None = Field(
        None, description="where the stacks' state lives (any Pulumi backend URL, e.g. "
        "s3://bucket/prefix for several controllers); default: file:// under data_dir/pulumi")
    drift_check_every: float = Field(
        3600.0, gt=0, description="seconds between drift checks (a preview that expects no "
        "changes) of each Pulumi stack")
    # the embedded default: one local endpoint whose machines are pilot processes on this host
    endpoints: list[AnyEndpoint] = Field(default_factory=_one_local_endpoint)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed(data) if isinstance(data, dict) else data

    @field_validator("database", mode="after")
    @classmethod
    def _database(cls, v: Path | str) -> Path | str:
        return v if isinstance(v, str) and is_postgres(v) else Path(v)

    @property
    def database_path(self) -> Path | None:
        """The SQLite file (None: the database is a PostgreSQL server)."""
        return self.database if isinstance(self.database, Path) else None

    @model_validator(mode="after")
    def _workers_share_a_server(self) -> Settings:
        if self.workers > 1 and self.database_path is not None:
            raise ValueError(f"workers = {self.workers} needs a database several processes "
                             "share: set database to a postgresql:// URL (SQLite is one "
                             "process's embedded store)")
        return self

    @model_validator(mode="after")
    def _unique_endpoints(self) -> Settings:
        bad = sorted(g for g, v in self.group_shares.items() if v <= 0)
        if bad:
            raise ValueError(f"group_shares must be positive: {bad}")
        bad = sorted(g for g, v in self.group_budgets.items() if v <= 0)
        if bad:
            raise ValueError(f"group_budgets must be positive: {bad}")
        dup = repeated(e.name for e in self.endpoints)
        if dup:
            raise ValueError(f"endpoint names must be unique: {dup}")
        for e in self.endpoints:
            if not isinstance(e, CloudEndpointConfig):
                continue
            if e.contextualization == "pilot" and not self.public_url:
                raise ValueError(f"endpoint {e.name} starts pilots on cloud machines: set "
                                 "public_url to a controller URL those machines can reach")
            if e.ssh_endpoint is not None:
                other = self.endpoint(e.ssh_endpoint)
                if other is None or other.driver != "ssh":
                    raise ValueError(f"endpoint {e.name}: ssh_endpoint {e.ssh_endpoint!r} is "
                                     "not an endpoint with driver 'ssh'")
        return self

    @model_validator(mode="after")
    def _machines_outside_data(self) -> Settings:
        data, machines = self.data_dir.resolve(), self.local_machines_dir.resolve()
        if machines == data or data in machines.parents or machines in data.parents:
            raise ValueError(f"machines_dir ({machines}) must be outside data_dir ({data}): "
                             "payloads must never see the controller's files")
        return self

    @property
    def local_machines_dir(self) -> Path:
        """Where the local driver keeps its machines' and jobs' directories."""
        if self.machines_dir is not None:
            return self.machines_dir
        return self.data_dir.parent / f"{self.data_dir.name}-machines"

    def controller_paths(self) -> list[str]:
        """What no payload may see of the controller: its data dir and its database."""
        if self.database_path is None:  # a server: hide the password file libpq reads
            pgpass = Path(os.environ.get("PGPASSFILE") or "~/.pgpass").expanduser()
            return [str(self.data_dir.resolve()), *([str(pgpass)] if pgpass.exists() else [])]
        db = self.database_path.resolve()
        return [str(self.data_dir.resolve()), str(db), f"{db}-wal", f"{db}-shm"]

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def machine_prices(self) -> dict[str, float]:
        """Each endpoint's configured hourly machine cost (machines started at a price of
        their own, on priced endpoints, carry it instead)."""
        return {e.name: e.machine_cost_per_hour() or 0.0 for e in self.endpoints}

    def endpoint(self, name: str) -> EndpointConfig | None:
        return next((e for e in self.endpoints if e.name == name), None)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Read the TOML file (if any), then CLOUDPILOT_* environment variables, then explicit
        overrides: each wins over the one before."""
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            data = read_toml(p)
            base = p.resolve().parent
            for key in ("database", "data_dir", "machines_dir"):
                if key in data and not is_postgres(str(data[key])) \
                        and not Path(data[key]).is_absolute():
                    data[key] = str(base / data[key])
            for ep in data.get("endpoints") or []:
                if not isinstance(ep, dict):
                    continue
                prices = ep.get("prices")
                if isinstance(prices, dict) and isinstance(prices.get("path"), str):
                    if not Path(prices["path"]).is_absolute():
                        prices["path"] = str(base / prices["path"])
                for section in (ep.get("ssh"), *(ep.get(b) for b in BATCH_DRIVERS)):
                    for key in ("key", "known_hosts"):
                        if isinstance(section, dict) and isinstance(section.get(key), str) \
                                and not Path(section[key]).expanduser().is_absolute():
                            section[key] = str(base / section[key])
        try:
            data.update(EnvSettingsSource(cls)())  # (the constructor would let the file win)
            data.update(overrides)
            return cls(**data)
        except ValidationError as e:
            lines = [f"  {config_error(err)}" for err in e.errors()]
            raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
