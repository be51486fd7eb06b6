"""The queue benchmark's workload: users, task queues, jobs and how they are cut into bulk
requests (shared by `python -m bench`, its PostgreSQL comparison and bench.dashboard)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.auth import Role
from controller.domain.jobs import NewJob, Requirements
from controller.store import Store

USERS = (("alice", "physics"), ("bob", "biology"), ("carol", "physics"))
MACHINE_CORES, MACHINE_MEMORY, MACHINE_SLOTS = 64, 262144, 64


@dataclass(frozen=True)
class QueueSpec:
    owner: str
    cores: int
    memory_mb: int


def queue_specs(n: int) -> list[QueueSpec]:
    """n distinct task queues: the owners take turns, memory differs per queue, all fit one
    machine of the benchmark endpoint."""
    return [QueueSpec(USERS[i % len(USERS)][0], 1 + i % 4, 512 + 64 * i) for i in range(n)]


def largest_job(specs: list[QueueSpec]) -> tuple[int, int]:
    """The most cores and the most memory any job of these queues asks for."""
    return max(q.cores for q in specs), max(q.memory_mb for q in specs)


def job_dict(k: int, q: QueueSpec) -> dict[str, Any]:
    return {"executable": "/bin/echo", "arguments": ["bench", str(k)], "name": f"bench-{k}",
            "requirements": {"cores": q.cores, "memory_mb": q.memory_mb, "max_runtime": 3600}}


def new_job(k: int, q: QueueSpec) -> NewJob:
    return NewJob(executable="/bin/echo", arguments=("bench", str(k)), name=f"bench-{k}",
                  requirements=Requirements(cores=q.cores, memory_mb=q.memory_mb,
                                            max_runtime=3600))


def batches(n_jobs: int, specs: list[QueueSpec], size: int) -> list[tuple[str, list[int]]]:
    """(owner, job numbers) per request: job k goes to queue k % Q; each owner's jobs are cut
    into batches, and the owners' batches interleave."""
    per_owner: dict[str, list[int]] = {u: [] for u, _ in USERS}
    for k in range(n_jobs):
        per_owner[specs[k % len(specs)].owner].append(k)
    cut = {u: [ks[i:i + size] for i in range(0, len(ks), size)] for u, ks in per_owner.items()}
    out: list[tuple[str, list[int]]] = []
    for i in range(max((len(b) for b in cut.values()), default=0)):
        out += [(u, b[i]) for u, b in cut.items() if i < len(b)]
    return out


def bodies(plan: list[tuple[str, list[int]]], specs: list[QueueSpec],
           tokens: dict[str, str]) -> list[tuple[str, bytes, int]]:
    """The bulk requests, encoded: (the owner's token, body, jobs in it)."""
    return [(tokens[owner], json.dumps({"jobs": [job_dict(k, specs[k % len(specs)])
                                                 for k in ks]}).encode(), len(ks))
            for owner, ks in plan]


def make_users(store: Store) -> dict[str, str]:
    tokens = {}
    for user, group in USERS:
        store.tokens.create_user(user, group)
        tokens[user] = store.tokens.issue(Role.USER, owner=user, note="bench")
    return tokens
