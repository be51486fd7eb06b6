"""GET /api/v1/events: job, machine, plan, endpoint and host events as server-sent events.

Each event's id is the reader's place in every event table (controller/store/views.py
`Cursor`), so a client that reconnects with Last-Event-ID misses nothing and sees nothing
twice. A user sees the job events of their own jobs (and the fleet's events); an admin sees
everything. The stream polls the store (events are recorded by the loop and by every request,
in this process or another), and ends after STREAM_MAX seconds: clients reconnect (browsers'
EventSource does so by itself) and their session or token is checked again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from controller.api.viewer import Viewer
from controller.auth import Role
from controller.errors import InvalidInput, NotFound
from controller.store import Store, views

router = APIRouter(prefix="/api/v1", tags=["events"])

POLL = 0.5  # seconds between looks at the store
KEEPALIVE = 15.0  # a comment line this often keeps proxies from closing an idle stream
STREAM_MAX = 300.0


def sse(event: views.Event, after: views.Cursor) -> str:
    data = {"kind": event.kind, "id": event.id, "at": event.at, **event.data}
    return f"id: {after}\nevent: {event.kind}\ndata: {json.dumps(data)}\n\n"


def parse_kinds(kinds: str | None) -> tuple[str, ...]:
    if not kinds:
        return views.EVENT_KINDS
    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = sorted(set(wanted) - set(views.EVENT_KINDS))
    if bad:
        raise InvalidInput(f"unknown event kinds {bad}; known: {', '.join(views.EVENT_KINDS)}")
    return wanted


@router.get("/events", response_class=StreamingResponse, responses={200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "a stream of `id:`, `event:` (the kind) and `data:` (JSON) records"}})
async def events(
    request: Request, p: Viewer,
    kinds: str | None = Query(None, description="comma-separated: job, machine, plan, "
                              "endpoint, host (default: all)"),
    job: int | None = Query(None, description="only this job's events"),
    since: Literal["now", "start"] = Query("now", description="without Last-Event-ID: "
                                           "from now on, or from the first event recorded"),
    last_event_id: str | None = Header(None, description="resume after this event id"),
) -> StreamingResponse:
    """Events as they are recorded, filtered by what the caller may see."""
    store: Store = request.app.state.store
    wanted = parse_kinds(kinds)
    owner = None if p.role == Role.ADMIN else p.owner
    if job is not None:
        j = await run_in_threadpool(store.jobs.get, job)
        if owner is not None and j.owner != owner:
            raise NotFound(f"no job {job}")  # do not reveal other owners' jobs
    if last_event_id:
        cursor = views.Cursor.parse(last_event_id)
    elif since == "start":
        cursor = views.Cursor()
    else:
        cursor = await run_in_threadpool(views.head, store)
    return StreamingResponse(_stream(request, store, cursor, wanted, owner, job),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(request: Request, store: Store, cursor: views.Cursor,
                  kinds: tuple[str, ...], owner: str | None,
                  job: int | None) -> AsyncIterator[str]:
    started = last_sent = time.monotonic()
    yield f"retry: 1000\n: cursor {cursor}\n\n"
    while time.monotonic() - started < STREAM_MAX \
            and not getattr(request.app.state, "closing", False):  # controller/server.py
        batch, cursor = await run_in_threadpool(views.events_after, store, cursor, kinds=kinds,
                                                owner=owner, job=job)
        if batch:
            yield "".join(sse(ev, after) for ev, after in batch)
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent > KEEPALIVE:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL)
