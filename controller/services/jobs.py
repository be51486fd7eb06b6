"""Operations on one job that the API and the dashboard share: who may see it, and killing
it (one transaction, in the store)."""

from __future__ import annotations

from controller.auth import Principal, Role
from controller.domain.jobs import Job
from controller.errors import NotFound
from controller.store import Store


def visible(store: Store, p: Principal, job_id: int) -> Job:
    """The job, if `p` may see it: an admin, or its owner; to anyone else it does not exist
    (never reveal other owners' jobs)."""
    job = store.jobs.get(job_id)
    if p.role == Role.ADMIN or job.owner == p.owner:
        return job
    raise NotFound(f"no job {job_id}")


def kill(store: Store, p: Principal, job_id: int) -> Job:
    """Kill a job `p` may see; a running one is stopped by its pilot at its next heartbeat."""
    visible(store, p, job_id)
    who = f"admin (token {p.token_id})" if p.is_admin else str(p.owner)
    return store.jobs.kill(job_id, who)
