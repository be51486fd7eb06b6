"""Jobs: requirements, the job record and the job state transition table."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.domain.transitions import check


class JobState(StrEnum):
    RECEIVED = "received"
    WAITING = "waiting"
    MATCHED = "matched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    KILLED = "killed"
    STALLED = "stalled"
    RESCHEDULED = "rescheduled"


S = JobState
# Every legal move of a job, with why it happens. Anything else is refused.
TRANSITIONS: dict[tuple[JobState, JobState], str] = {
    (S.RECEIVED, S.WAITING): "validated and put in its task queue",
    (S.WAITING, S.MATCHED): "a pilot with a fitting free slot took it",
    (S.MATCHED, S.RUNNING): "the pilot started the payload",
    (S.MATCHED, S.DONE): "the payload ended before the pilot's first heartbeat",
    (S.MATCHED, S.FAILED): "the payload could not be started",
    (S.RUNNING, S.DONE): "the payload exited 0",
    (S.RUNNING, S.FAILED): "the payload exited non-zero or ran past its time limit",
    (S.MATCHED, S.STALLED): "the pilot stopped heartbeating before starting it",
    (S.RUNNING, S.STALLED): "the pilot stopped heartbeating",
    (S.MATCHED, S.RESCHEDULED): "the pilot was interrupted (SIGTERM, machine stopping)",
    (S.RUNNING, S.RESCHEDULED): "the pilot was interrupted (SIGTERM, machine stopping)",
    (S.STALLED, S.RESCHEDULED): "retries left: the job goes back to its queue",
    (S.STALLED, S.FAILED): "no retries left",
    (S.RESCHEDULED, S.WAITING): "back in its task queue",
    (S.RECEIVED, S.KILLED): "killed by its owner or an admin",
    (S.WAITING, S.KILLED): "killed by its owner or an admin",
    (S.MATCHED, S.KILLED): "killed by its owner or an admin",
    (S.RUNNING, S.KILLED): "killed by its owner or an admin",
    (S.STALLED, S.KILLED): "killed by its owner or an admin",
    (S.RESCHEDULED, S.KILLED): "killed by its owner or an admin",
}

FINAL_STATES = frozenset({S.DONE, S.FAILED, S.KILLED})
HELD_STATES = frozenset({S.MATCHED, S.RUNNING})  # held by a pilot


def check_transition(old: JobState, new: JobState) -> str:
    """The reason the table gives for old -> new; raises IllegalTransition otherwise."""
    return check(TRANSITIONS, "job", old, new)


@dataclass(frozen=True)
class Requirements:
    """What a job needs from a slot. Jobs with equal requirements share a task queue."""

    cores: int = 1
    memory_mb: int = 512
    tags: frozenset[str] = field(default_factory=frozenset)
    max_runtime: int = 3600
    endpoints: frozenset[str] = field(default_factory=frozenset)  # allowed; empty = any
    banned_endpoints: frozenset[str] = field(default_factory=frozenset)
    spot: bool = True  # may run on spot (interruptible) machines; False: on-demand only
    platforms: frozenset[str] = field(default_factory=frozenset)  # any of; empty = any
    # issue 24, the fallback ladder: never on-demand (waits for spot however long), and how
    # long a wait for spot before on-demand may be used (None: the endpoint's fallback_after)
    spot_only: bool = False
    fallback_after: float | None = None

    def to_dict(self) -> dict[str, object]:
        # platforms only when given, so the task queue keys of older jobs stay as they were
        extra: dict[str, object] = {"platforms": sorted(self.platforms)} if self.platforms else {}
        if self.spot_only:
            extra["spot_only"] = True
        if self.fallback_after is not None:
            extra["fallback_after"] = self.fallback_after
        return {
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "tags": sorted(self.tags),
            "max_runtime": self.max_runtime,
            "endpoints": sorted(self.endpoints),
            "banned_endpoints": sorted(self.banned_endpoints),
            "spot": self.spot,
            **extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Requirements:
        return cls(
            cores=int(d.get("cores", 1)),
            memory_mb=int(d.get("memory_mb", 512)),
            tags=frozenset(d.get("tags", ())),
            max_runtime=int(d.get("max_runtime", 3600)),
            endpoints=frozenset(d.get("endpoints", ())),
            banned_endpoints=frozenset(d.get("banned_endpoints", ())),
            spot=bool(d.get("spot", True)),
            platforms=frozenset(d.get("platforms", ())),
            spot_only=bool(d.get("spot_only", False)),
            fallback_after=None if d.get("fallback_after") is None
            else float(d["fallback_after"]),
        )

    def allows_endpoint(self, endpoint: str) -> bool:
        if endpoint in self.banned_endpoints:
            return False
        return not self.endpoints or endpoint in self.endpoints


def task_queue_key(req: Requirements, owner: str, group: str) -> str:
    """A stable key for a task queue: identical requirements, owner and group (as DIRAC's
    TaskQueueDB groups by owner, group and requirements)."""
    blob = json.dumps({"req": req.to_dict(), "owner": owner, "group": group}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class InputFile:
    name: str
    content: str | None = None  # inline text
    content_b64: str | None = None  # inline bytes
    url: str | None = None  # fetched by the pilot
    sandbox: str | None = None  # an input sandbox's SHA-256, fetched by the pilot


@dataclass(frozen=True)
class NewJob:
    """A validated submission, before it has an id."""

    executable: str
    arguments: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    inputs: tuple[InputFile, ...] = ()
    requirements: Requirements = field(default_factory=Requirements)
    priority: int = 0
    name: str = ""
    max_retries: int | None = None
    outputs: tuple[str, ...] = ()  # names or glob patterns in the job directory to keep


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    owner: str
    group: str
    state: JobState
    task_queue: int
    priority: int
    executable: str
    arguments: list[str]
    env: dict[str, str]
    inputs: list[dict[str, str]]
    requirements: Requirements
    max_retries: int
    retries: int
    reschedules: int
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None
    pilot_id: str | None
    machine: str | None
    endpoint: str | None
    exit_code: int | None
    reason: str | None
    progress: str | None
    last_heartbeat: float | None
    attempt: int = 0  # the current (or last) attempt's number; each match starts the next
    lease_expires: float | None = None  # when the current attempt's lease runs out
    outputs: list[str] = field(default_factory=list)  # patterns of files to keep
