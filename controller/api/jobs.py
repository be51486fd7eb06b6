"""The user API: submit, bulk submit, list, get, kill, output, events."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from controller.api.deps import Id, SettingsDep, StoreDep, UserAuth
from controller.api.files import follow_output, readable
from controller.api.schemas import BulkIn, EventOut, JobIn, JobOut, OutputOut, Submitted
from controller.auth import Principal, Role
from controller.config.settings import Settings
from controller.domain.jobs import Job, JobState, NewJob
from controller.domain.matching import (
    SlotOffer,
    machine_offer,
    unmatchable_reason,
    waiting_reason,
)
from controller.errors import Forbidden, InvalidInput, NotFound
from controller.services import budgets
from controller.services import jobs as job_service
from controller.store import Store
from controller.store.jobs import IdempotencyKey
from pilot.urls import UrlRefused, check_url

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


def registered(store: Store, settings: Settings) -> list[tuple[str, SlotOffer]]:
    """What each registered machine offers in all (its pilots' resources, its endpoint's
    rules)."""
    out = []
    for p in store.machines.live_pilots():
        ep = settings.endpoint(p["endpoint"])
        if ep is not None:
            out.append((p["machine"], machine_offer(ep.shape(), p["cores"], p["memory_mb"],
                                                    p["tags"], p["spot"], p["on_demand"])))
    return out


def waiting_reasons(store: Store, settings: Settings) -> Callable[[Job], str | None]:
    """Why a job waits: its group is over its monthly budget, no endpoint can run it, or no
    registered machine can (yet)."""
    shapes = [e.shape() for e in settings.endpoints]
    machines = registered(store, settings)
    over = budgets.overruns(store, settings, time.time())

    def reason(job: Job) -> str | None:
        if job.state != JobState.WAITING:
            return None
        why = waiting_reason(job.requirements, shapes, machines)
        if job.group in over:
            return over[job.group].reason() + (f"; {why}" if why else "")
        return why

    return reason


IdempotencyHeader = Header(
    None, alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
    description="the same key with the same body answers the first submission's ids again; "
    "with another body it is a 409")


def idempotency(request: Request, body: BaseModel, key: str | None,
                settings: Settings) -> IdempotencyKey | None:
    if key is None:
        return None
    digest = hashlib.sha256(request.url.path.encode() + b"\n" + json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode())
    return IdempotencyKey(key, digest.hexdigest(), settings.idempotency_keep)


async def _submit(request: Request, store: Store, settings: Settings, p: Principal,
                  jobs: list[NewJob], idem: IdempotencyKey | None) -> Submitted:
    if p.role == Role.ADMIN or p.owner is None:
        raise Forbidden("an admin token acts for no owner; submit with a user token")
    known = {e.name for e in settings.endpoints}
    boxes: set[str] = set()  # input sandboxes checked
    for j in jobs:
        unknown = (j.requirements.endpoints | j.requirements.banned_endpoints) - known
        if unknown and known:
            raise InvalidInput(f"unknown endpoints {sorted(unknown)}; known: {sorted(known)}")
        for f in j.inputs:
            if f.url is not None:
                try:
                    check_url(f.url, settings.input_url_allow)
                except UrlRefused as e:
                    raise InvalidInput(f"input {f.name}: {e}") from None
            if f.sandbox is not None and f.sandbox not in boxes:
                if not await run_in_threadpool(store.files.owns_sandbox, f.sandbox, p.owner):
                    raise InvalidInput(f"input {f.name}: no sandbox {f.sandbox} of "
                                       f"{p.owner} (upload it: POST /api/v1/sandboxes)")
                boxes.add(f.sandbox)
                await run_in_threadpool(store.files.touch_sandbox, f.sandbox, time.time())
    ids = await run_in_threadpool(store.jobs.submit, jobs, p.owner, p.group or p.owner,
                                  settings.max_retries, None, idem)
    # as many waiting pilots as there are new jobs, each one that can take them
    request.app.state.notifier.fire(len(ids), needs=list(Counter(
        j.requirements for j in jobs).items()))
    shapes = [e.shape() for e in settings.endpoints]
    bad = {}
    for i, j in zip(ids, jobs, strict=True):
        r = unmatchable_reason(j.requirements, shapes)
        if r:
            bad[i] = r
    return Submitted(ids=ids, unmatchable=bad)


@router.post("", status_code=201, response_model=Submitted)
async def submit(body: JobIn, request: Request, store: StoreDep, settings: SettingsDep,
                 p: UserAuth, key: str | None = IdempotencyHeader) -> Submitted:
    """Submit one job. Owner and group come from the token."""
    return await _submit(request, store, settings, p, [body.to_domain()],
                         idempotency(request, body, key, settings))


@router.post("/bulk", status_code=201, response_model=Submitted)
async def submit_bulk(body: BulkIn, request: Request, store: StoreDep, settings: SettingsDep,
                      p: UserAuth, key: str | None = IdempotencyHeader) -> Submitted:
    """Submit many jobs in one request (one transaction: all or none)."""
    return await _submit(request, store, settings, p, [j.to_domain() for j in body.jobs],
                         idempotency(request, body, key, settings))


@router.get("", response_model=list[JobOut])
def list_jobs(store: StoreDep, settings: SettingsDep, p: UserAuth,
              state: JobState | None = None, owner: str | None = None,
              endpoint: str | None = None, limit: int = Query(100, ge=1, le=10_000),
              offset: int = Query(0, ge=0, le=2**63 - 1)) -> list[JobOut]:
    """List jobs, filtered by state, owner and endpoint. Users see their own jobs."""
    if p.role != Role.ADMIN:
        if owner is not None and owner != p.owner:
            raise Forbidden("users may only list their own jobs")
        owner = p.owner
    jobs = store.jobs.find(state=state.value if state else None, owner=owner,
                           endpoint=endpoint, limit=limit, offset=offset)
    why = waiting_reasons(store, settings)
    return [JobOut.of(j, why(j)) for j in jobs]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: Id, store: StoreDep, settings: SettingsDep, p: UserAuth) -> JobOut:
    job = job_service.visible(store, p, job_id)
    return JobOut.of(job, waiting_reasons(store, settings)(job))


@router.post("/{job_id}/kill", response_model=JobOut)
def kill_job(job_id: Id, store: StoreDep, p: UserAuth) -> JobOut:
    """Kill a job; a running one is stopped by its pilot at its next heartbeat."""
    return JobOut.of(job_service.kill(store, p, job_id))


@router.get("/{job_id}/events", response_model=list[EventOut])
def job_events(job_id: Id, store: StoreDep, p: UserAuth) -> list[EventOut]:
    """Every state change of the job, with time and reason."""
    job_service.visible(store, p, job_id)
    return [EventOut(**e) for e in store.jobs.events(job_id)]


@router.get("/{job_id}/output", response_model=OutputOut,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def job_output(job_id: Id, store: StoreDep, p: UserAuth,
               follow: bool = Query(False, description="stream the running job's output "
                                    "as plain text until it ends")
               ) -> OutputOut | StreamingResponse:
    """The tails of the job's stdout and stderr once it ended; with follow=1 its output as it
    comes (what its pilot sends each heartbeat), until it ends."""
    if follow:
        readable(store, p, job_id)
        return StreamingResponse(follow_output(store, job_id), media_type="text/plain")
    job_service.visible(store, p, job_id)
    out = store.jobs.output(job_id)
    if out is None:
        raise NotFound(f"job {job_id} has no output yet")
    return OutputOut(job_id=job_id, stdout=out["stdout"] or "", stderr=out["stderr"] or "",
                     truncated=bool(out["truncated"]), uploaded_at=out["uploaded_at"])
