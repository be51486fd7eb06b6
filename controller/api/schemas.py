"""Request and response bodies. Requests forbid unknown fields, so a typo is a clear 422; they
are strict (a boolean or a string is not a number), every integer fits what the store holds,
and every list and text has a size limit. (Every string is free of NUL characters and lone
surrogates: api/limits.py refuses such a body before it is parsed.)"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from controller.api.limits import MAX_BULK_JOBS
from controller.domain.files import MAX_PATTERNS, BadName, check_pattern
from controller.domain.jobs import InputFile, Job, NewJob, Requirements
from controller.errors import TooLarge

MAX_INLINE = 256 * 1024
MAX_ARG = 128 * 1024  # Linux's limit for one argument or environment string
MAX_ARGV_ENV = 1024 * 1024  # arguments and environment of one job, in all
INT64 = 2**63 - 1  # SQLite's largest integer

Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:+-]{1,64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@:-]{1,64}$")]


class ErrorOut(BaseModel):
    """Every error answer: what went wrong, in one sentence."""

    detail: str


class InvalidOut(ErrorOut):
    """A 422: the request is malformed; `errors` names each wrong field."""

    errors: list[str]


# what any API route may answer besides its success (declared on every router, in app.py)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the request cannot succeed as it is"},
    401: {"model": ErrorOut, "description": "no, unknown, expired or revoked token"},
    403: {"model": ErrorOut, "description": "this token's role or scope may not do this"},
    404: {"model": ErrorOut, "description": "no such object (or another owner's)"},
    409: {"model": ErrorOut, "description": "the object is not in a state that allows this"},
    413: {"model": ErrorOut, "description": "the body, the output or the bulk is too large"},
    416: {"model": ErrorOut, "description": "the Range asked for is not inside the file"},
    422: {"model": InvalidOut, "description": "malformed: each wrong field is named"},
    503: {"model": ErrorOut, "description": "the database is busy: retry"},
    507: {"model": ErrorOut, "description": "the owner's file quota or the file store is "
          "full: what is stored already is kept"},
}


class Strict(BaseModel):
    """A request body: unknown fields and loose types refused. (NUL characters and lone
    surrogates never reach it: the body is refused before parsing, api/limits.py.)"""

    model_config = ConfigDict(extra="forbid", strict=True)


class RequirementsIn(Strict):
    cores: int = Field(1, ge=1, le=1024)
    memory_mb: int = Field(512, ge=1, le=4_194_304)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    max_runtime: int = Field(3600, ge=1, le=30 * 86400, description="seconds")
    endpoints: list[Name] = Field(default_factory=list, max_length=64,
                                  description="allowed; empty = any")
    banned_endpoints: list[Name] = Field(default_factory=list, max_length=64)
    spot: bool = Field(True, description="may run on spot machines (false: on-demand only)")
    platforms: list[str] = Field(default_factory=list, max_length=32,
                                 description="any of these platforms (e.g. el9); empty = any")
    spot_only: bool = Field(False, description="only on spot machines: never on-demand, "
                            "however long it waits")
    fallback_after: float | None = Field(
        None, ge=0, le=30 * 86400, description="seconds it waits for a spot machine before "
        "an on-demand one may be started for it (default: the endpoint's fallback_after)")

    @model_validator(mode="after")
    def _markets(self) -> RequirementsIn:
        if self.spot_only and not self.spot:
            raise ValueError("spot_only and spot = false exclude each other")
        return self


class InputFileIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-][A-Za-z0-9._ -]{0,127}$")
    content: str | None = Field(None, max_length=MAX_INLINE)
    content_b64: str | None = Field(None, max_length=MAX_INLINE * 4 // 3 + 4)
    url: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                            description="http(s); no loopback, link-local, private or "
                            "metadata address unless the controller's input_url_allow "
                            "names it")
    sandbox: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="the SHA-256 "
                                "of an input sandbox its owner uploaded (POST "
                                "/api/v1/sandboxes)")

    @model_validator(mode="after")
    def _one_source(self) -> InputFileIn:
        given = [x for x in (self.content, self.content_b64, self.url, self.sandbox)
                 if x is not None]
        if len(given) != 1:
            raise ValueError("an input file needs exactly one of content, content_b64, url, "
                             "sandbox")
        if self.name in (".", "..") or self.name.startswith(".std"):
            raise ValueError(f"an input file cannot be named {self.name}")
        if self.content_b64 is not None:
            try:
                base64.b64decode(self.content_b64, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"content_b64 is not valid base64: {e}") from None
        return self


class JobIn(Strict):
    executable: str = Field(min_length=1, max_length=4096)
    arguments: list[Annotated[str, StringConstraints(max_length=MAX_ARG)]] = Field(
        default_factory=list, max_length=4096)
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")],
              Annotated[str, StringConstraints(max_length=MAX_ARG)]] = Field(
        default_factory=dict, max_length=1024)
    inputs: list[InputFileIn] = Field(default_factory=list, max_length=64)
    requirements: RequirementsIn = Field(default_factory=RequirementsIn)
    priority: int = Field(0, ge=-1000, le=1000)
    name: str = Field("", max_length=200)
    max_retries: int | None = Field(None, ge=0, le=100)
    outputs: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS, description=
                               "files to keep when the payload ends: names or glob patterns "
                               "(*, ?, [...]) inside the job directory, e.g. result.csv, "
                               "plots/*.png")

    @model_validator(mode="after")
    def _sizes(self) -> JobIn:
        for pattern in self.outputs:
            try:
                check_pattern(pattern)
            except BadName as e:
                raise ValueError(f"outputs: {e}") from None
        for k in self.env:
            if k.startswith("CLOUDPILOT_"):
                raise ValueError(f"env: {k} is the pilot's to set")
        size = sum(len(a.encode()) for a in self.arguments) + sum(
            len(k.encode()) + len(v.encode()) for k, v in self.env.items())
        if size > MAX_ARGV_ENV:
            raise ValueError(f"arguments and env take {size} bytes; at most {MAX_ARGV_ENV}")
        return self

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
                platforms=frozenset(r.platforms), spot_only=r.spot_only,
                fallback_after=r.fallback_after,
            ),
            priority=self.priority,
            name=self.name,
            max_retries=self.max_retries,
            outputs=tuple(self.outputs),
        )


class BulkIn(Strict):
    jobs: list[JobIn] = Field(min_length=1, description="at most the controller's "
                              "max_bulk_jobs (413 beyond, before any job is validated)")

    @model_validator(mode="before")
    @classmethod
    def _count_first(cls, data: Any) -> Any:
        jobs = data.get("jobs") if isinstance(data, dict) else None
        limit = MAX_BULK_JOBS.get()
        if isinstance(jobs, list) and len(jobs) > limit:
            raise TooLarge(f"at most {limit} jobs per request, got {len(jobs)}")
        return data


class HostIn(Strict):
    """A host joining an SSH endpoint."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$", description="unique in the endpoint")
    address: str = Field(pattern=r"^[A-Za-z0-9.:-]{1,253}$", description="IP or DNS name")
    port: int = Field(22, ge=1, le=65535)
    slots: int | None = Field(None, ge=1, le=256, description="pilot slots (endpoint's if unset)")
    host_key: str | None = Field(None, max_length=4096,
                                 description="pin its key: a known_hosts line")


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
    outputs: list[str] = Field(default_factory=list, description="patterns of files to keep")
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
    endpoint: str | None = Field(None, max_length=64)
    cores: int = Field(ge=1, le=1024)
    memory_mb: int = Field(ge=1, le=2**40)
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    slots: int = Field(ge=1, le=1024)
    version: str = Field("", max_length=100)


class RegisterOut(BaseModel):
    pilot_id: str
    heartbeat_interval: float
    endpoint: str
    token: str = Field(description="the pilot's own credential: every later request of this "
                       "pilot carries it (the bootstrap token is spent)")
    input_url_allow: list[str] = Field(
        default_factory=list, description="addresses input URLs may reach although they are "
        "loopback, link-local or private (the controller's input_url_allow)")
    max_output_files_bytes: int = Field(100 * 1024 * 1024, description="a job's output files "
                                        "in all, per attempt: what does not fit is not sent")
    max_output_files: int = Field(100, description="output files per attempt")
    live_output_bytes: int = Field(16384, description="a running job's output sent per "
                                   "heartbeat at most")


class MatchIn(Strict):
    free_cores: int = Field(ge=0, le=INT64)
    free_memory_mb: int = Field(ge=0, le=INT64)
    free_slots: int = Field(ge=0, le=INT64)
    wait: float = Field(0, ge=0, le=300, description="long-poll: seconds to wait for work")
    count: int | None = Field(None, ge=1, le=1024,
                              description="at most this many jobs (default: one per free slot)")
    time_left: int | None = Field(None, ge=0, description="seconds the pilot has left (e.g. "
                                  "its batch job's wall time): no job with a longer "
                                  "max_runtime is handed to it")


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
    drain: bool = Field(False, description="the controller is removing this machine: take no "
                        "new work, leave when the jobs held are done (an idle pilot learns it "
                        "here, as it sends no heartbeats)")


class JobProgress(Strict):
    id: int = Field(ge=0, le=INT64)
    attempt: int | None = Field(None, ge=1, le=INT64, description="the attempt it runs")
    progress: str | None = Field(None, max_length=1000)


class HeartbeatIn(Strict):
    jobs: list[JobProgress] = Field(default_factory=list, max_length=4096)


class HeartbeatOut(BaseModel):
    stop: list[int] = Field(description="jobs to stop now (killed, or no longer yours)")
    lost: list[int] = Field(default_factory=list, description="of those, the attempts that are "
                            "no longer yours: kill them at once")
    lease: float = Field(description="the other jobs' leases now run this long from when this "
                         "heartbeat was sent (s)")
    drain: bool = Field(description="take no new work and exit: the machine is going away")


class ReportIn(Strict):
    status: Literal["done", "failed", "interrupted"]
    attempt: int | None = Field(None, ge=1, le=INT64, description="the attempt it ran "
                                "(a stale attempt's report is a 409)")
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    reason: str | None = Field(None, max_length=2000)


class OutputIn(Strict):
    attempt: int | None = Field(None, ge=1, le=INT64, description="the attempt it ran")
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False


class UserIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    group: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    share: float = Field(1.0, gt=0, le=1e6)


class TokenIn(Strict):
    role: Literal["admin", "user", "pilot"] = Field(
        description="pilot: a one-time bootstrap token that registers one pilot")
    owner: Name | None = Field(None, description="user tokens only")
    endpoint: Name | None = Field(None, description="pilot tokens only")
    lifetime: float | None = Field(None, gt=0, le=100 * 365 * 86400,
                                   description="seconds; none = no expiry")
    note: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _scope(self) -> TokenIn:
        if self.owner is not None and self.role != "user":
            raise ValueError(f"a {self.role} token has no owner")
        if self.endpoint is not None and self.role != "pilot":
            raise ValueError(f"a {self.role} token has no endpoint")
        return self


class TokenOut(BaseModel):
    token: str


# issue 22: job files, input sandboxes, live output -------------------------------------------
class DeclaredFile(Strict):
    name: str = Field(min_length=1, max_length=255, description="its path in the job directory")
    size: int = Field(ge=0, le=INT64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SkippedFile(Strict):
    name: str = Field(max_length=1000)
    size: int = Field(ge=0, le=INT64)
    why: str = Field(max_length=500)


class FilesIn(Strict):
    attempt: int = Field(ge=1, le=INT64)
    files: list[DeclaredFile] = Field(default_factory=list, max_length=10_000)
    skipped: list[SkippedFile] = Field(default_factory=list, max_length=10_000,
                                       description="matching files the pilot does not send "
                                       "(over the limits, not regular, outside the job dir)")


class UploadState(BaseModel):
    name: str
    received: int = Field(description="bytes stored: send the rest from here")
    complete: bool


class FilesOut(BaseModel):
    chunk: int = Field(description="send each file in chunks of this many bytes, at offsets "
                       "that are multiples of it")
    files: list[UploadState]


class FileOut(BaseModel):
    name: str
    attempt: int
    size: int
    sha256: str
    complete: bool = Field(description="false: its upload is not finished (no download yet)")
    stored_at: float | None
    expires_at: float
    url: str = Field(description="where to download it")


class SandboxOut(BaseModel):
    sha256: str
    size: int
    complete: bool
    received: int = Field(description="bytes stored: send the rest from here (offset=...)")
    chunk: int
    expires_at: float


class LiveIn(Strict):
    attempt: int = Field(ge=1, le=INT64)
    stdout: str = Field("", max_length=1024 * 1024)
    stderr: str = Field("", max_length=1024 * 1024)


class LivePiece(BaseModel):
    seq: int
    attempt: int
    stream: str
    at: float
    text: str


class LiveOut(BaseModel):
    job_id: int
    state: str
    pieces: list[LivePiece]
    next: int = Field(description="ask again with after=this for what comes next")
