"""The pilot API: register, match (long-poll), heartbeat, output, report.

A machine boots with a one-time bootstrap token, which may only register: registering spends
it and answers the pilot's own credential. Every other route here is about one pilot and
needs that pilot's own credential."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from controller.api.deps import (
    BootstrapAuth,
    Id,
    PilotAuth,
    PilotCredential,
    SettingsDep,
    StoreDep,
)
from controller.api.schemas import (
    HeartbeatIn,
    HeartbeatOut,
    JobOut,
    Match,
    MatchIn,
    MatchOut,
    OutputIn,
    RegisterIn,
    RegisterOut,
    ReportIn,
)
from controller.config.settings import EndpointConfig
from controller.domain.credentials import (
    DEFAULT_MAX_MACHINE_AGE,
    pilot_credential_lifetime,
    renewal_due,
)
from controller.domain.jobs import Job
from controller.domain.machines import DRAIN_STATES
from controller.domain.matching import SlotOffer, machine_offer
from controller.domain.placement import Asking, AskingPilots
from controller.errors import Forbidden, InvalidInput, TooLarge, Unauthorized
from controller.store import Store
from controller.store.jobs import Claim, Looking, retried

router = APIRouter(prefix="/api/v1/pilots", tags=["pilots"])


def _own_pilot(store: Store, credential: PilotAuth, pilot_id: str) -> dict[str, object]:
    """The pilot, when `credential` is its own (verified here, in the caller's thread)."""
    p = credential.principal()
    if p.pilot_id != pilot_id:
        raise Forbidden(f"this credential is pilot {p.pilot_id}'s, not pilot {pilot_id}'s")
    return store.machines.pilot(pilot_id)


@router.post("/register", status_code=201, response_model=RegisterOut)
def register(body: RegisterIn, store: StoreDep, settings: SettingsDep,
             p: BootstrapAuth) -> RegisterOut:
    """A pilot starting on a machine says what the machine offers, with the machine's
    one-time bootstrap token; it gets its own credential back (the bootstrap token is dead
    from then on)."""
    assert p.endpoint is not None
    if body.endpoint is not None and body.endpoint != p.endpoint:
        raise Forbidden(f"this pilot token is for endpoint {p.endpoint}, not {body.endpoint}")
    if p.machine is not None and body.machine != p.machine:
        raise Forbidden(f"this bootstrap token is for machine {p.machine}, not {body.machine}")
    pilot_id = uuid.uuid4().hex[:12]
    store.machines.register_pilot(pilot_id, p.endpoint, body.machine, body.cores,
                                  body.memory_mb, body.tags, body.slots, body.version)
    ep = settings.endpoint(p.endpoint)
    try:
        credential = store.tokens.exchange(p, pilot_id, body.machine,
                                           lifetime=credential_lifetime(ep))
    except Unauthorized:  # spent by a concurrent registration: undo ours
        store.machines.pilot_left(pilot_id, body.machine, "its bootstrap token was spent")
        raise
    return RegisterOut(pilot_id=pilot_id, endpoint=p.endpoint, token=credential,
                       heartbeat_interval=ep.heartbeat_interval if ep else 10.0,
                       input_url_allow=list(settings.input_url_allow),
                       max_output_files_bytes=settings.max_output_files_bytes,
                       max_output_files=settings.max_output_files,
                       live_output_bytes=settings.live_output_bytes)


@router.post("/{pilot_id}/match", response_model=MatchOut,
             responses={204: {"description": "no job fits within the wait"}})
async def match(pilot_id: str, body: MatchIn, request: Request, store: StoreDep,
                settings: SettingsDep, p: PilotAuth) -> MatchOut | Response:
    """Hand the pilot the best waiting jobs that fit its free resources (one per free slot
    unless `count` says fewer), waiting up to `wait` seconds for work to arrive (long-poll)."""
    count = min(body.count or body.free_slots, body.free_slots)
    margin = settings.job_token_margin
    asking: AskingPilots = request.app.state.asking
    seen = Asking("", SlotOffer("", 0, 0))  # this machine as its last attempt found it
    draining = False
    left_to: list[str] = []  # the pilots of fuller machines the last attempt left work to
    polls: dict[str, asyncio.Event] = request.app.state.polls  # each waiting pilot's wake-up
    # an idle pilot sends no heartbeats: its long-poll records it alive, at most every quarter
    # of the endpoint's lost_after, and looks again that often (new work it can take, and a
    # fuller machine leaving work to it, wake it at once: notifier.offers, AskingPilots.fuller)
    seen_every = 5.0  # set from the endpoint at the first attempt
    renewed = False  # the credential, once in this request at most

    def attempt() -> bytes | None:
        """One thread hop, one transaction: the credential (verified at the first attempt),
        the pilot, the claim."""
        nonlocal seen, draining, left_to, seen_every, renewed
        pilot = _own_pilot(store, p, pilot_id)
        ep = settings.endpoint(str(pilot["endpoint"]))
        seen_every = (ep.lost_after if ep else 60.0) / 4
        # an idle pilot sends no heartbeats: its long-poll renews its credential (issue 26)
        now = time.time()
        renewed = renewed or renew_credential(store, p, ep, now)
        tags: list[str] = pilot["tags"]  # type: ignore[assignment]
        # the endpoint's rules, with the longest job this pilot may still take (its time left)
        shape = dataclasses.replace(
            ep.shape() if ep else SlotOffer(str(pilot["endpoint"]), 0, 0),
            max_runtime=time_left(ep, body.time_left))
        spot, on_demand = bool(pilot.get("spot")), bool(pilot.get("on_demand"))
        offer = machine_offer(shape, body.free_cores, body.free_memory_mb, tags, spot,
                              on_demand)
        cores, mem = pilot["cores"], pilot["memory_mb"]
        assert isinstance(cores, int) and isinstance(mem, int)
        # what the machine has in all (never less than what it says is free now)
        whole = machine_offer(shape, max(cores, body.free_cores),
                              max(mem, body.free_memory_mb), tags, spot, on_demand)
        seen = Asking(str(pilot["machine"]), offer, seen.busy_until)
        if not draining:
            asking.enter(pilot_id, seen)  # fuller machines asking now are served first
        # work a fuller machine asking now should have is left to it, but only while this
        # request may still wait: a pilot that cannot (wait 0, or its long-poll's last look)
        # takes the best job it may take now rather than an empty answer
        may_wait = deadline - time.monotonic() > 0
        look = store.jobs.looking(pilot_id, seen.machine, offer, whole, now, seen_every)

        def claimed(look: Looking) -> tuple[Claim, bytes | None]:
            """The claim and its answer in one transaction: the answer is written out inside
            it, so a job that cannot be answered raises before anything is committed, and
            nothing is claimed (and the answer is serialized once)."""
            shares, fuller = store.tokens.shares(), asking.now(than=seen) if may_wait else None
            with store.tx():
                claim = store.jobs.claim(
                    look, pilot_id, seen.machine, offer, by=settings.fair_share_by,
                    shares=shares, group_shares=settings.group_shares, token_margin=margin,
                    count=max(count, 0), whole=whole,
                    reserve_limit=ep.reserve_limit if ep else 0.0, fuller=fuller, now=now,
                    strand_limit=ep.strand_limit if ep else None)
                if not claim.jobs:
                    return claim, None
                return claim, MatchOut(matches=[
                    Match(job=JobOut.of(job), token=token,
                          token_expires_in=job.requirements.max_runtime + margin,
                          attempt=job.attempt, lease=store.jobs.lease)
                    for job, token in claim.jobs]).model_dump_json().encode()

        got, answer = (Claim([]), None) if look is None else retried(lambda: claimed(look))
        asking.defer(bool(got.deferred))
        left_to = asking.fuller(pilot_id, got.deferred) if got.deferred else []
        seen = dataclasses.replace(seen, busy_until=got.busy_until)
        draining = got.draining
        if draining:
            asking.leave(pilot_id)
        return answer

    deadline = time.monotonic() + spread(min(body.wait, settings.long_poll_max))
    notifier = request.app.state.notifier
    try:
        while True:
            changed = polls[pilot_id] = notifier.current()
            got = await run_in_threadpool(attempt)
            for other in left_to:  # they take what this one left them now, not at a re-check
                if (ev := polls.get(other)) is not None:
                    ev.set()
            if draining and not got:  # an idle pilot learns it here
                return MatchOut(matches=[], drain=True)
            if got:
                asking.leave(pilot_id)
                if asking.deferred():  # work left to this pilot may not be its choice
                    notifier.fire()
                return Response(got, media_type="application/json")
            left = deadline - time.monotonic()
            if count <= 0 or left <= 0 or await request.is_disconnected():
                return Response(status_code=204)
            notifier.offers(changed, seen.free)  # woken by work it can take, not by other
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(left, seen_every))
    finally:
        asking.leave(pilot_id)
        if polls.get(pilot_id) is changed:
            del polls[pilot_id]


def spread(wait: float) -> float:
    """A long wait ends at a random point of its last quarter: pilots that started waiting
    together (a burst of registrations, one submission answering many) do not all come back
    in the same instant, every `wait` seconds. Short waits are kept as asked."""
    return wait - random.uniform(0.0, wait / 4) if wait >= LONG_WAIT else wait


LONG_WAIT = 10.0  # seconds: waits this long or longer are spread


def renew_credential(store: Store, p: PilotCredential, ep: EndpointConfig | None,
                     now: float) -> bool:
    """Renew the pilot's own credential when a share of its lifetime has passed (not at
    every request); whether it was renewed (issue 26: heartbeats renew it, and an idle
    pilot's long-poll)."""
    lifetime = credential_lifetime(ep)
    if not renewal_due(p.principal().expires_at, lifetime, now):
        return False
    store.tokens.renew(p.principal().token_id, now + lifetime)
    return True


def credential_lifetime(ep: EndpointConfig | None) -> float:
    """How long a pilot's own credential lives from its last renewal (issue 26)."""
    return ep.credential_lifetime() if ep else pilot_credential_lifetime(DEFAULT_MAX_MACHINE_AGE)


def time_left(ep: EndpointConfig | None, pilot_says: int | None) -> int | None:
    """The longest job a pilot may take: the endpoint's limit and the pilot's own time left
    (a batch pilot's wall time runs out); without the pilot's word, what a fresh pilot of the
    endpoint has."""
    limit = ep.longest_job() if ep else None
    if pilot_says is None:
        return limit
    return pilot_says if limit is None else min(limit, pilot_says)


@router.post("/{pilot_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(pilot_id: str, body: HeartbeatIn, store: StoreDep, settings: SettingsDep,
              p: PilotAuth) -> HeartbeatOut:
    """The pilot is alive; per running job, its attempt and progress. Renews the leases of
    the attempts that are still its own, and its credential once a share of its lifetime has
    passed (not at every heartbeat); answers which jobs to stop (and which of them at once:
    no longer its own). One transaction."""
    pilot = _own_pilot(store, p, pilot_id)
    now = time.time()
    with store.tx():
        state = store.machines.pilot_seen(pilot_id, str(pilot["machine"]), now)
        got = store.jobs.heartbeat(pilot_id, {j.id: j.progress for j in body.jobs},
                                   attempts={j.id: j.attempt for j in body.jobs if j.attempt})
        renew_credential(store, p, settings.endpoint(str(pilot["endpoint"])), now)
    return HeartbeatOut(stop=got.stop, lost=got.lost, lease=got.lease,
                        drain=state in DRAIN_STATES)


@router.delete("/{pilot_id}", status_code=204)
def deregister(pilot_id: str, store: StoreDep, p: PilotAuth,
               reason: str = Query("exited", max_length=500)) -> Response:
    """The pilot is leaving (idle, drained or stopped); its machine is stopped when it was the
    machine's last pilot."""
    pilot = _own_pilot(store, p, pilot_id)
    store.machines.pilot_left(pilot_id, str(pilot["machine"]), reason)
    store.tokens.revoke_pilot(pilot_id)
    return Response(status_code=204)


@router.post("/{pilot_id}/jobs/{job_id}/output", status_code=204)
def upload_output(pilot_id: str, job_id: Id, body: OutputIn, store: StoreDep,
                  settings: SettingsDep, p: PilotAuth) -> Response:
    """The job's stdout and stderr (bounded by max_output_bytes in all)."""
    _own_pilot(store, p, pilot_id)
    size = len(body.stdout.encode()) + len(body.stderr.encode())
    if size > settings.max_output_bytes:
        raise TooLarge(f"output is {size} bytes; at most {settings.max_output_bytes}: "
                       "keep the tail")
    store.jobs.save_output(pilot_id, job_id, body.stdout, body.stderr, body.truncated,
                           attempt=body.attempt)
    return Response(status_code=204)


@router.post("/{pilot_id}/jobs/{job_id}/report", response_model=JobOut)
async def report(pilot_id: str, job_id: Id, body: ReportIn, request: Request,
                 store: StoreDep, p: PilotAuth) -> JobOut:
    """The job's end: done, failed (with exit code) or interrupted (rescheduled)."""
    if body.status == "failed" and body.exit_code == 0 and not body.reason:
        raise InvalidInput("a failed job with exit code 0 needs a reason")

    def end() -> Job:  # one thread hop: the credential, then the report's transaction
        _own_pilot(store, p, pilot_id)
        return store.jobs.report(pilot_id, job_id, body.status, body.exit_code, body.reason,
                                 None, body.attempt)

    job = await run_in_threadpool(end)
    if body.status == "interrupted":
        request.app.state.notifier.fire()
    return JobOut.of(job)
