"""Request and response bodies. Requests forbid unknown fields, so a typo is a clear 422."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.domain.jobs import InputFile, Job, NewJob, Requirements

MAX_INLINE = 256 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequirementsIn(Strict):
    cores: int = Field(1, ge=1, le=1024)
    memory_mb: int = Field(512, ge=1, le=4_194_304)
    tags: list[str] = Field(default_factory=list, max_length=32)
    max_runtime: int = Field(3600, ge=1, le=30 * 86400, description="seconds")
    endpoints: list[str] = Field(default_factory=list, description="allowed; empty = any")
    banned_endpoints: list[str] = Field(default_factory=list)
    spot: bool = Field(True, description="may run on spot machines (false: on-demand only)")


class InputFileIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-][A-Za-z0-9._ -]{0,127}$")
    content: str | None = Field(None, max_length=MAX_INLINE)
    content_b64: str | None = Field(None, max_length=MAX_INLINE * 4 // 3 + 4)
    url: str | None = Field(None, pattern=r"^https?://", max_length=2048)

    @model_validator(mode="after")
    def _one_source(self) -> InputFileIn:
        given = [x for x in (self.content, self.content_b64, self.url) if x is not None]
        if len(given) != 1:
            raise ValueError("an input file needs exactly one of content, content_b64, url")
        if self.name in (".", ".."):
            raise ValueError("an input file name cannot be . or ..")
        return self


class JobIn(Strict):
    executable: str = Field(min_length=1, max_length=4096)
    arguments: list[str] = Field(default_factory=list, max_length=10_000)
    env: dict[str, str] = Field(default_factory=dict)
    inputs: list[InputFileIn] = Field(default_factory=list, max_length=64)
    requirements: RequirementsIn = Field(default_factory=RequirementsIn)
    priority: int = Field(0, ge=-1000, le=1000)
    name: str = Field("", max_length=200)
    max_retries: int | None = Field(None, ge=0, le=100)

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not k or "=" in k or "\0" in k or k.startswith("CLOUDPILOT_"):
                raise ValueError(f"invalid environment variable name {k!r}")
        return v

    def to_domain(self) -> NewJob:
        r = self.requirements
        return NewJob(
            executable=self.executable,
            arguments=tuple(self.arguments),
            env=tuple(sorted(self.env.items())),
            inputs=tuple(InputFile(**f.model_dump()) for f in self.inputs),
            requirements=Requirements(
                cores=r.cores, memory_mb=r.memory_mb, tags=frozenset(r.tags),
                max_runtime=r.max_runtime, endpoints=frozenset(r.endpoints),
                banned_endpoints=frozenset(r.banned_endpoints), spot=r.spot,
            ),
            priority=self.priority,
            name=self.name,
            max_retries=self.max_retries,
        )


class BulkIn(Strict):
    jobs: list[JobIn] = Field(min_length=1)


class Submitted(BaseModel):
    ids: list[int]
    unmatchable: dict[int, str] = Field(
        default_factory=dict, description="accepted jobs no endpoint can run, with why")


class JobOut(BaseModel):
    id: int
    name: str
    owner: str
    group: str
    state: str
    task_queue: int
    priority: int
    executable: str
    arguments: list[str]
    env: dict[str, str]
    inputs: list[dict[str, str]]
    requirements: dict[str, object]
    max_retries: int
    retries: int
    reschedules: int
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None
    machine: str | None
    endpoint: str | None
    exit_code: int | None
    reason: str | None
    progress: str | None
    last_heartbeat: float | None
    attempt: int = Field(0, description="the current (or last) attempt; each match starts one")
    waiting_reason: str | None = None

    @classmethod
    def of(cls, job: Job, waiting_reason: str | None = None) -> JobOut:
        d = {k: getattr(job, k) for k in cls.model_fields if hasattr(job, k)}
        d["state"] = job.state.value
        d["requirements"] = job.requirements.to_dict()
        return cls(**d, waiting_reason=waiting_reason)


class EventOut(BaseModel):
    at: float
    from_state: str | None
    to_state: str
    reason: str | None


class OutputOut(BaseModel):
    job_id: int
    stdout: str
    stderr: str
    truncated: bool
    uploaded_at: float


class RegisterIn(Strict):
    machine: str = Field(min_length=1, max_length=200)
    endpoint: str | None = None
    cores: int = Field(ge=1, le=1024)
    memory_mb: int = Field(ge=1)
    tags: list[str] = Field(default_factory=list)
    slots: int = Field(ge=1, le=1024)
    version: str = ""


class RegisterOut(BaseModel):
    pilot_id: str
    heartbeat_interval: float
    endpoint: str


class MatchIn(Strict):
    free_cores: int = Field(ge=0)
    free_memory_mb: int = Field(ge=0)
    free_slots: int = Field(ge=0)
    wait: float = Field(0, ge=0, le=300, description="long-poll: seconds to wait for work")
    count: int | None = Field(None, ge=1, le=1024,
                              description="at most this many jobs (default: one per free slot)")


class Match(BaseModel):
    job: JobOut
    token: str = Field(description="job token: scoped to this job, its owner and this attempt "
                       "(revoked when the attempt ends)")
    token_expires_in: int
    attempt: int = Field(description="the attempt this match starts: name it in heartbeats, "
                         "output and report")
    lease: float = Field(description="seconds the attempt may run without a renewal: each "
                         "answered heartbeat renews it from when it was sent; a pilot that "
                         "cannot renew it kills the payload before it runs out")


class MatchOut(BaseModel):
    matches: list[Match]


class JobProgress(Strict):
    id: int
    attempt: int | None = Field(None, ge=1, description="the attempt it runs")
    progress: str | None = Field(None, max_length=1000)


class HeartbeatIn(Strict):
    jobs: list[JobProgress] = Field(default_factory=list)


class HeartbeatOut(BaseModel):
    stop: list[int] = Field(description="jobs to stop now (killed, or no longer yours)")
    lost: list[int] = Field(default_factory=list, description="of those, the attempts that are "
                            "no longer yours: kill them at once")
    lease: float = Field(description="the other jobs' leases now run this long from when this "
                         "heartbeat was sent (s)")
    drain: bool = Field(description="take no new work and exit: the machine is going away")


class ReportIn(Strict):
    status: Literal["done", "failed", "interrupted"]
    attempt: int | None = Field(None, ge=1, description="the attempt it ran (a "
                                "stale attempt's report is a 409)")
    exit_code: int | None = None
    reason: str | None = Field(None, max_length=2000)


class OutputIn(Strict):
    attempt: int | None = Field(None, ge=1, description="the attempt it ran")
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False


class UserIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    group: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    share: float = Field(1.0, gt=0)


class TokenIn(Strict):
    role: Literal["admin", "user", "pilot"]
    owner: str | None = None
    endpoint: str | None = None
    lifetime: float | None = Field(None, gt=0, description="seconds; none = no expiry")
    note: str = ""


class TokenOut(BaseModel):
    token: str
