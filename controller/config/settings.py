"""One typed settings object: a TOML file, overridden by CLOUDPILOT_* environment variables.

Relative paths in the file are taken relative to the file's folder."""

from __future__ import annotations

import os
import re
import tomllib
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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

CLOUD_DRIVERS = ("aws", "openstack")
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


class SlurmConfig(BatchSiteConfig):
    """A Slurm cluster (driver = "slurm"): what each pilot job asks sbatch for."""

    partition: str | None = Field(None, pattern=SLURM_NAME)
    account: str | None = Field(None, pattern=SLURM_NAME)
    qos: str | None = Field(None, pattern=SLURM_NAME)
    sbatch_options: list[str] = Field(default_factory=list, description="more sbatch "
                                      "options, each '--name' or '--name=value'")

    @model_validator(mode="after")
    def _options(self) -> SlurmConfig:
        for o in self.sbatch_options:
            if not re.fullmatch(r"--[a-z][a-z-]*(=[^\s'\"\\;&|`$<>]+)?", o):
                raise ValueError(f"sbatch option {o!r}: write it as --name or --name=value "
                                 "(no spaces, quotes or shell characters)")
        return self


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
    qsub_options: list[str] = Field(default_factory=list, description="more qsub options, "
                                    "each '-name' or '-name value' (e.g. '-l arch=lx-amd64')")
    accounting_file: str = Field("$SGE_ROOT/${SGE_CELL:-default}/common/accounting",
                                 pattern=r"^[A-Za-z0-9_./~${}:-]{1,300}$",
                                 description="where ended jobs are read (accounting(5)), as "
                                 "the login node's shell sees it")

    @model_validator(mode="after")
    def _options(self) -> SgeConfig:
        for o in self.qsub_options:
            if not re.fullmatch(r"-[a-z][A-Za-z_]*( [^\s'\"\\;&|`$<>]+)?", o):
                raise ValueError(f"qsub option {o!r}: write it as -name or -name value "
                                 "(one value, no quotes or shell characters)")
        return self


BATCH_DRIVERS = ("slurm", "sge")  # drivers of batch-system sites: their sections


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


class EndpointConfig(BaseModel):
    """One endpoint: where machines come from (driver) and what each machine offers."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    driver: Literal["local", "ssh", "slurm", "sge", "aws", "openstack"] = "local"
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
    # price-aware endpoints: several machine types x zones, spot or on demand
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
    reserve_limit: float = Field(300.0, ge=0, description="hold a machine's cores for a wide "
                                 "job only if its running jobs free them within this (s)")
    extend_limit: float | None = Field(None, ge=0, description="a job goes on a machine "
                                       "running jobs only if it should end at most this "
                                       "long (s) after them (default: no limit)")
    strand_limit: float | None = Field(None, ge=0, description="a job goes on a machine "
                                       "running jobs only if the machine's other cores x how "
                                       "long it should outlive its jobs stay within this "
                                       "(core-seconds; default: no limit)")
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
    refuse: dict[str, int] = Field(
        default_factory=dict, description="driver local (tests, demos): pools "
        "('type/zone/market') whose launches are refused as sold out, each the first N times "
        "(0: always)")
    # --- end issue 24 ----------------------------------------------------------------------
    ssh: SshConfig | None = Field(None, description="driver ssh: hosts, user, key, host keys")
    slurm: SlurmConfig | None = Field(None, description="driver slurm: login node, partition"
                                      ", wall time, queue limits")
    sge: SgeConfig | None = Field(None, description="driver sge: login node, queue, project, "
                                  "parallel environment, h_rt, queue limits")
    via: Literal["direct", "pulumi"] = Field(
        "direct", description="driver local: start pilot processes directly, or through a "
        "Pulumi stack (stacks/local: the real engine, its plans and state)")
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
    # --- end of issue 26 settings ---------------------------------------------------------

    @model_validator(mode="after")
    def _types_need_prices(self) -> EndpointConfig:
        spot = any("spot" in t.markets for t in self.machine_types)
        if spot and self.prices is None:
            raise ValueError("machine types on spot need a price source ([endpoints.prices])")
        names = [t.name for t in self.machine_types]
        if len(set(names)) != len(names):
            raise ValueError("machine type names must be unique")
        return self

    def offers(self) -> tuple[Offer, ...]:
        return tuple(o for t in self.machine_types for o in t.offers())

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
    # cloud endpoints: how machines are contextualized, and the cloud's own section
    contextualization: Literal["pilot", "ssh"] = "pilot"
    ssh_endpoint: str | None = Field(
        None, description="ssh mode: the SSH endpoint that deploys pilots on these machines")
    aws: AwsConfig | None = None
    openstack: OpenStackConfig | None = None

    @model_validator(mode="after")
    def _driver_sections(self) -> EndpointConfig:
        if self.via == "pulumi" and self.driver != "local":
            raise ValueError("via = 'pulumi' is for driver 'local' (aws and openstack always "
                             "go through Pulumi)")
        if self.auto_apply is None:
            self.auto_apply = self.driver not in CLOUD_DRIVERS
        for kind in CLOUD_DRIVERS:
            if self.driver == kind and getattr(self, kind) is None:
                raise ValueError(f"driver {kind!r} needs an [endpoints.{kind}] section")
            if self.driver != kind and getattr(self, kind) is not None:
                raise ValueError(f"an [endpoints.{kind}] section needs driver = {kind!r}")
        if self.contextualization == "ssh":
            cloud = self.cloud()
            if cloud is None:
                raise ValueError("contextualization = 'ssh' is for cloud endpoints")
            if not (cloud.public_key or cloud.public_key_file):
                raise ValueError("contextualization = 'ssh' needs a public_key (or "
                                 "public_key_file) in the cloud section")
            if not cloud.ssh_cidr:
                raise ValueError("contextualization = 'ssh' needs ssh_cidr in the cloud "
                                 "section: who may reach the machines' port 22")
            if not self.ssh_endpoint:
                raise ValueError("contextualization = 'ssh' needs ssh_endpoint: the SSH "
                                 "endpoint that deploys pilots on these machines")
        if self.driver in CLOUD_DRIVERS and self.isolation == "user":
            raise ValueError("isolation = 'user' needs a pilot running as root; cloud "
                             "machines run it as the user cloudpilot: use 'bwrap'")
        return self

    def cloud(self) -> AwsConfig | OpenStackConfig | None:
        return self.aws or self.openstack

    def machine_cost_per_hour(self) -> float | None:
        if self.cost_per_hour is not None:
            return self.cost_per_hour
        return self.aws.spot_max_price if self.aws is not None else None

    def approval_policy(self) -> ApprovalPolicy:
        return ApprovalPolicy(bool(self.auto_apply), self.auto_apply_max_new,
                              self.auto_apply_max_cost_per_hour, self.machine_cost_per_hour())

    @model_validator(mode="after")
    def _ssh_section(self) -> EndpointConfig:
        if self.driver == "ssh" and self.ssh is None:
            raise ValueError("an ssh endpoint needs an [endpoints.ssh] section (user, key)")
        if self.driver != "ssh" and self.ssh is not None:
            raise ValueError(f"an [endpoints.ssh] section needs driver = \"ssh\", "
                             f"not {self.driver}")
        for name in BATCH_DRIVERS:
            if self.driver == name and getattr(self, name) is None:
                raise ValueError(f"a {name} endpoint needs an [endpoints.{name}] section "
                                 "(login node address, user, key)")
            if self.driver != name and getattr(self, name) is not None:
                raise ValueError(f"an [endpoints.{name}] section needs driver = \"{name}\", "
                                 f"not {self.driver}")
        return self

    @property
    def batch(self) -> BatchSiteConfig | None:
        """The batch-system section of a batch endpoint (slurm, sge), else None."""
        return self.slurm or self.sge

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

    def batch_spec(self) -> BatchSpec:
        """A batch endpoint's settings as domain/batch.py's decision reads them."""
        b = self.batch
        assert b is not None
        return BatchSpec(self.name, self.shape(), self.slots, self.max_machines, b.max_queued,
                         self.max_starts_per_cycle, b.pending_timeout, b.pending_backoff,
                         self.boot_timeout, self.lost_after)

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
            offers=self.offers(),
            max_spend_per_hour=self.max_spend_per_hour,
            diversity=self.diversity,
            drain_below=self.drain_below,
            drain_budget=self.drain_budget,
            reserve_limit=self.reserve_limit,
            extend_limit=self.extend_limit,
            strand_limit=self.strand_limit,
            size_tolerance=self.size_tolerance,
            headroom=self.headroom,
            fallback_after=self.fallback_after,
            wait_cost=self.wait_cost,
        )


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
    endpoints: list[EndpointConfig] = Field(
        default_factory=lambda: [EndpointConfig(name="local")])

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
            if e.driver in CLOUD_DRIVERS and e.contextualization == "pilot" \
                    and not self.public_url:
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
            lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
            raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
