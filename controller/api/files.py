"""Job files (output sandboxes), input sandboxes and live output.

- A pilot, with its own credential and only for an attempt it holds, declares the files its
  payload left (name, size, SHA-256; the quota is checked here, before any byte), then sends
  each in chunks at offsets (a chunk sent again is stored again, the same bytes: resumable).
  The last chunk completes the file once its checksum matches.
- The job's owner and admins list and download a job's files (streamed, one HTTP Range); a
  job token only its own job's. (With a token, or the dashboard's session cookie: GETs.)
- Input sandboxes: a user uploads a file once (content-addressed by SHA-256, deduplicated
  among all owners, readable by the owners who sent it); jobs name it in `inputs`; pilots fetch
  it with the job's token.
- Live output: a pilot sends what a running payload wrote since its last heartbeat; users
  read it from a sequence number on (`cloudpilot job ID --follow`)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from controller.api.deps import Id, PilotAuth, SettingsDep, StoreDep, UserAuth
from controller.api.schemas import (
    FileOut,
    FilesIn,
    FilesOut,
    LiveIn,
    LiveOut,
    LivePiece,
    SandboxOut,
    UploadState,
)
from controller.api.viewer import Viewer
from controller.auth import Principal, Role
from controller.blobs import Blobs, digest
from controller.config.settings import Settings
from controller.domain.files import (
    CHUNK,
    BadName,
    BadRange,
    Declared,
    byte_range,
    check_name,
    chunk_at,
    over_quota,
)
from controller.domain.jobs import FINAL_STATES, Job
from controller.drivers.contextualization import (
    PILOT_CODE_ROUTE,
    pilot_code_sha256,
    pilot_tarball,
)
from controller.errors import (
    Conflict,
    FileStoreFull,
    Forbidden,
    InvalidInput,
    NotFound,
    PermanentError,
)
from controller.store import Store

router = APIRouter(tags=["files"])
log = logging.getLogger("cloudpilot.files")
FileName = PathParam(description="the file's path in the job directory", max_length=1000)
Sha = PathParam(pattern=r"^[0-9a-f]{64}$")
_OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
BYTES: dict[int | str, dict[str, Any]] = {
    200: {"content": _OCTETS, "description": "the file's bytes"},
    206: {"content": _OCTETS, "description": "the bytes a Range asked for"}}


class RangeNotSatisfiable(PermanentError):
    """The Range asked for is not inside the file."""

    status_code = 416


def blobs_of(request: Request) -> Blobs:
    blobs: Blobs = request.app.state.blobs
    return blobs


def out_key(job_id: int, attempt: int, name: str) -> str:
    """A job file's key in the file store (never the user's name itself)."""
    return f"out/{job_id}/{attempt}/{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def box_key(sha256: str) -> str:
    return f"sandbox/{sha256[:2]}/{sha256}"


class Hashing:
    """Running SHA-256s of uploads arriving in order in this process (so the last chunk
    completes without reading the file back); an upload that arrived out of order, or partly
    at another process, is read back once instead."""

    def __init__(self, keep: int = 1024) -> None:
        self.lock = threading.Lock()
        self.running: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self.keep = keep

    def add(self, key: str, offset: int, data: bytes) -> None:
        with self.lock:
            got = self.running.pop(key, None)
            if offset == 0:
                got = (0, hashlib.sha256())
            if got is None or got[0] != offset:
                return  # not in order here: read back at the end
            got[1].update(data)
            self.running[key] = (offset + len(data), got[1])
            while len(self.running) > self.keep:
                self.running.popitem(last=False)

    def result(self, blobs: Blobs, key: str, size: int) -> str:
        with self.lock:
            got = self.running.pop(key, None)
        if got is not None and got[0] == size:
            return str(got[1].hexdigest())
        return digest(blobs, key)


HASHING = Hashing()


def purge(store: Store, blobs: Blobs, settings: Settings, now: float) -> int:
    """Delete job files that arrived, and input sandboxes no job named, longer than
    keep_outputs_for ago (a bounded batch); how many."""
    gone = 0
    before = now - settings.keep_outputs_for
    for f in store.files.expired(before):
        blobs.delete(out_key(f["job_id"], f["attempt"], f["name"]), f["upload"])
        store.files.forget(f["job_id"], f["attempt"], f["name"])
        gone += 1
    for b in store.files.unused_sandboxes(before):
        blobs.delete(box_key(b["sha256"]), b["upload"])
        store.files.forget_sandbox(b["sha256"])
        gone += 1
    return gone


async def purge_loop(app: Any, interval: float) -> None:
    """Retention: purge every `interval` seconds (each controller process; deleting twice
    is harmless)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(purge, app.state.store, app.state.blobs,
                                    app.state.settings, time.time())
        except Exception:  # the next round tries again
            log.exception("purging expired files failed")


def _name(name: str) -> str:
    try:
        return check_name(name)
    except BadName as e:
        raise InvalidInput(str(e)) from None


# the pilot's side ------------------------------------------------------------------------
def declare(store: Store, blobs: Blobs, settings: Settings, pilot_id: str, job_id: int,
            attempt: int, files: list[Declared],
            skipped: list[tuple[str, int, str]]) -> dict[str, dict[str, Any]]:
    """Record the files an attempt will send (within the attempt's limits, the owner's quota
    and the store's free space: else FileStoreFull, the files named in the job's events with
    what the pilot did not send); each file's row."""
    if len({f.name for f in files}) != len(files):
        raise InvalidInput("a file is declared twice")
    now = time.time()
    free = blobs.free()
    with store.tx() as c:
        job = store.files.held(c, pilot_id, job_id, attempt)
        known = {r["name"]: r["size"] for r in c.execute(
            "SELECT name, size FROM job_files WHERE job_id = ? AND attempt = ?",
            (job_id, attempt)).fetchall()}
        new = [f for f in files if f.name not in known]
        count = len(known) + len(new)
        total = sum(known.values()) + sum(f.size for f in new)
        if count > settings.max_output_files or total > settings.max_output_files_bytes:
            raise InvalidInput(f"{count} files of {total} bytes: at most "
                               f"{settings.max_output_files} files of "
                               f"{settings.max_output_files_bytes} bytes per attempt")
        adding = sum(f.size for f in new)
        why = over_quota(store.files.used(c, job["owner"]), adding, settings.owner_quota_bytes)
        if why is None and free is not None and adding > free:
            why = (f"the file store's disk has {free} bytes free, {adding} are needed; "
                   "nothing already stored was lost")
        rows = {}
        if why is None:
            rows = store.files.declare(c, job_id, attempt, job["owner"], files, now)
        else:
            skipped = [*skipped, *((f.name, f.size, why) for f in files)]
        if skipped:
            store.files.note(c, job_id, job["state"], "output files not kept: " + "; ".join(
                f"{n} ({size} bytes): {w}" for n, size, w in skipped[:50]), now)
    if why is not None:
        raise FileStoreFull(why)  # the files not kept are in the job's events
    return rows


@router.post("/api/v1/pilots/{pilot_id}/jobs/{job_id}/files", response_model=FilesOut)
def declare_files(pilot_id: str, job_id: Id, body: FilesIn, request: Request,
                  store: StoreDep, settings: SettingsDep, p: PilotAuth) -> FilesOut:
    """The files an attempt's payload left, before their bytes: names, sizes, checksums (and
    what the pilot does not send, with why: written to the job's events). Answers how much of
    each is stored (a resumed upload sends the rest). The owner's quota is checked here (507)."""
    if p.principal().pilot_id != pilot_id:
        raise Forbidden(f"this credential is pilot {p.principal().pilot_id}'s, not pilot "
                        f"{pilot_id}'s")
    files = [Declared(_name(f.name), f.size, f.sha256) for f in body.files]
    rows = declare(store, blobs_of(request), settings, pilot_id, job_id, body.attempt, files,
                   [(x.name, x.size, x.why) for x in body.skipped])
    return FilesOut(chunk=CHUNK, files=[
        UploadState(name=n, received=int(r["received"]), complete=bool(r["complete"]))
        for n, r in rows.items()])


@router.put("/api/v1/pilots/{pilot_id}/jobs/{job_id}/files/{name:path}",
            response_model=UploadState)
async def upload_file(pilot_id: str, job_id: Id, request: Request, store: StoreDep,
                      settings: SettingsDep, p: PilotAuth, name: str = FileName,
                      attempt: int = Query(ge=1, le=2**63 - 1),
                      offset: int = Query(0, ge=0, le=2**63 - 1),
                      size: int | None = Query(None, ge=0, le=2**63 - 1),
                      sha256: str | None = Query(None, pattern=r"^[0-9a-f]{64}$")
                      ) -> UploadState:
    """A chunk of a declared file (the body, raw bytes) at `offset`. The last chunk completes
    the file when its SHA-256 is the declared one (else 422, and it is sent again). The first
    chunk of a file not declared yet may declare it (`size` and `sha256`)."""
    data = await request.body()
    blobs = blobs_of(request)

    def put() -> UploadState:
        if p.principal().pilot_id != pilot_id:
            raise Forbidden(f"this credential is pilot {p.principal().pilot_id}'s, not pilot "
                            f"{pilot_id}'s")
        try:
            f = store.files.held_file(pilot_id, job_id, attempt, _name(name))
        except NotFound:
            if size is None or sha256 is None or offset != 0:
                raise
            # a file not declared yet, declared by its first chunk (one request for a file
            # of one chunk)
            declare(store, blobs, settings, pilot_id, job_id, attempt,
                    [Declared(name, size, sha256)], [])
            f = store.files.held_file(pilot_id, job_id, attempt, name)
        if f["complete"]:
            return UploadState(name=name, received=f["size"], complete=True)
        why = chunk_at(offset, f["received"], f["size"], len(data))
        if why is not None:
            raise Conflict(why)
        key = out_key(job_id, attempt, name)
        upload = f["upload"]
        if offset == 0 and upload is None:
            upload = blobs.begin(key, f["size"])
            if upload is not None:
                store.files.set_upload(job_id, attempt, name, upload)
                upload = store.files.file(job_id, attempt, name)["upload"]
        blobs.put(key, upload, offset, data, f["size"])
        HASHING.add(key, offset, data)
        end = offset + len(data)
        if end < f["size"]:
            store.files.received(job_id, attempt, name, end)
            return UploadState(name=name, received=end, complete=False)
        blobs.finish(key, upload, f["size"])
        got = HASHING.result(blobs, key, f["size"])
        if got != f["sha256"]:
            blobs.delete(key, upload)
            store.files.received(job_id, attempt, name, 0)
            with store.tx() as c:
                c.execute("UPDATE job_files SET received = 0, upload = NULL WHERE job_id = ?"
                          " AND attempt = ? AND name = ?", (job_id, attempt, name))
            raise InvalidInput(f"{name}: its SHA-256 is {got}, not the declared "
                               f"{f['sha256']}: send it again")
        store.files.completed(job_id, attempt, name, time.time())
        return UploadState(name=name, received=f["size"], complete=True)

    return await run_in_threadpool(put)


@router.post("/api/v1/pilots/{pilot_id}/jobs/{job_id}/live", status_code=204)
def live_output(pilot_id: str, job_id: Id, body: LiveIn, store: StoreDep,
                settings: SettingsDep, p: PilotAuth) -> Response:
    """What a running payload wrote since the pilot last sent it (at most live_output_bytes
    a heartbeat; the pilot marks what it dropped)."""
    if p.principal().pilot_id != pilot_id:
        raise Forbidden(f"this credential is pilot {p.principal().pilot_id}'s, not pilot "
                        f"{pilot_id}'s")
    size = len(body.stdout.encode()) + len(body.stderr.encode())
    # per stream at most live_output_bytes of output, which as text may take up to 3 times
    # its bytes (each undecodable byte is U+FFFD), and the pilot's mark of what it dropped
    if size > 6 * settings.live_output_bytes + 1024:
        raise InvalidInput(f"{size} bytes of live output; at most "
                           f"{settings.live_output_bytes} a heartbeat")
    with store.tx() as c:
        store.files.held(c, pilot_id, job_id, body.attempt)
        store.files.live_append(c, job_id, body.attempt, [
            (s, t) for s, t in (("stdout", body.stdout), ("stderr", body.stderr)) if t],
            time.time())
    return Response(status_code=204)


# the user's side -------------------------------------------------------------------------
def readable(store: Store, p: Principal, job_id: int) -> Job:
    """The job, when this caller may read its files and output: its owner, an admin, or the
    job's own token (another job's token, of the same owner too, is refused)."""
    job = store.jobs.get(job_id)
    if p.role == Role.JOB and p.job_id != job_id:
        raise Forbidden("a job token reads only its own job's files and output")
    if p.is_admin or job.owner == p.owner:
        return job
    raise NotFound(f"no job {job_id}")  # do not reveal other owners' jobs


@router.get("/api/v1/jobs/{job_id}/files", response_model=list[FileOut])
def list_files(job_id: Id, store: StoreDep, settings: SettingsDep,
               p: Viewer) -> list[FileOut]:
    """The job's output files, per attempt (a failed or interrupted attempt's apart)."""
    readable(store, p, job_id)
    return [FileOut(name=f["name"], attempt=f["attempt"], size=f["size"], sha256=f["sha256"],
                    complete=bool(f["complete"]), stored_at=f["stored_at"],
                    expires_at=f["created_at"] + settings.keep_outputs_for,
                    url=f"/api/v1/jobs/{job_id}/files/{f['name']}?attempt={f['attempt']}")
            for f in store.files.files(job_id)]


def _stream(blobs: Blobs, key: str, size: int, sha256: str, range_: str | None,
            filename: str) -> StreamingResponse:
    try:
        r = byte_range(range_, size)
    except BadRange as e:
        raise RangeNotSatisfiable(str(e)) from None
    base = filename.rsplit("/", 1)[-1]
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"',
               # any name, as RFC 6266 says (a header holds Latin-1 only)
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(base)}",
               "X-Checksum-Sha256": sha256}
    if r is None:
        headers["Content-Length"] = str(size)
        body: Iterator[bytes] = blobs.read(key) if size else iter(())
        return StreamingResponse(body, 200, headers, media_type="application/octet-stream")
    first, last = r
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    return StreamingResponse(blobs.read(key, first, last), 206, headers,
                             media_type="application/octet-stream")


@router.get("/api/v1/jobs/{job_id}/files/{name:path}", response_class=StreamingResponse,
            responses=BYTES)
def get_file(job_id: Id, request: Request, store: StoreDep, p: Viewer,
             name: str = FileName, attempt: int | None = Query(None, ge=1, le=2**63 - 1),
             range_: str | None = Header(None, alias="Range", max_length=200)
             ) -> StreamingResponse:
    """One output file, streamed (of the newest attempt that has it, or `attempt`); one
    `Range: bytes=first-last` gives a 206 with those bytes. Its SHA-256 is its ETag."""
    readable(store, p, job_id)
    f = store.files.stored(job_id, _name(name), attempt)
    return _stream(blobs_of(request), out_key(job_id, f["attempt"], f["name"]), f["size"],
                   f["sha256"], range_, f["name"])


@router.get("/api/v1/jobs/{job_id}/live", response_model=LiveOut)
async def job_live(job_id: Id, store: StoreDep, settings: SettingsDep, p: Viewer,
                   after: int = Query(0, ge=0, le=2**63 - 1),
                   wait: float = Query(0, ge=0, le=30, description="long-poll: wait this "
                                       "long for new output")) -> LiveOut:
    """A running job's output as it comes: the pieces after sequence number `after` (the
    newest 256 KiB are kept)."""
    job = await run_in_threadpool(readable, store, p, job_id)
    deadline = time.monotonic() + min(wait, settings.long_poll_max)
    while True:
        pieces = await run_in_threadpool(store.files.live, job_id, after)
        if pieces or time.monotonic() >= deadline:
            break
        job = await run_in_threadpool(store.jobs.get, job_id)
        if job.state in FINAL_STATES:
            break
        await asyncio.sleep(0.25)
    return LiveOut(job_id=job_id, state=job.state.value,
                   pieces=[LivePiece(**x) for x in pieces],
                   next=pieces[-1]["seq"] if pieces else after)


async def follow_output(store: Store, job_id: int) -> AsyncIterator[bytes]:
    """A job's live output as plain text until the job ends (GET .../output?follow=1)."""
    after = 0
    while True:
        pieces = await run_in_threadpool(store.files.live, job_id, after)
        for x in pieces:
            yield x["text"].encode()
            after = x["seq"]
        if not pieces:
            job = await run_in_threadpool(store.jobs.get, job_id)
            if job.state in FINAL_STATES:
                return
            await asyncio.sleep(0.25)


# input sandboxes -------------------------------------------------------------------------
def _uploader(p: Principal) -> str:
    if p.owner is None:
        raise Forbidden("an admin token acts for no owner; upload sandboxes with a user token")
    return p.owner


def _box_out(row: dict[str, Any], settings: Settings) -> SandboxOut:
    return SandboxOut(sha256=row["sha256"], size=row["size"], complete=bool(row["complete"]),
                      received=row["size"] if row["complete"] else row["received"],
                      chunk=CHUNK, expires_at=row["created_at"] + settings.keep_outputs_for)


@router.post("/api/v1/sandboxes", response_model=SandboxOut, status_code=201)
async def new_sandbox(request: Request, store: StoreDep, settings: SettingsDep,
                      p: UserAuth,
                      sha256: str | None = Query(None, pattern=r"^[0-9a-f]{64}$"),
                      size: int | None = Query(None, ge=0, le=2**63 - 1)) -> SandboxOut:
    """Store an input sandbox once: the body is the whole file; or, for a large one, an empty
    body with `sha256` and `size`, then its chunks (PUT /api/v1/sandboxes/{sha256}). A
    sandbox anyone stored already with the same content is not stored again (the body is still
    checked, so only who has the bytes may refer to them). Jobs name it in `inputs` as
    {"name": ..., "sandbox": sha256}."""
    owner = _uploader(p)
    data = await request.body()
    blobs = blobs_of(request)
    if data:
        got = hashlib.sha256(data).hexdigest()
        if sha256 is not None and got != sha256:
            raise InvalidInput(f"the body's SHA-256 is {got}, not {sha256}")
        if size is not None and size != len(data):
            raise InvalidInput(f"the body has {len(data)} bytes, not {size}")
        sha256, size = got, len(data)
    elif sha256 is None or size is None:
        raise InvalidInput("send the file as the body, or sha256 and size to send it in chunks")
    if size > settings.max_sandbox_bytes:
        raise InvalidInput(f"a sandbox has at most {settings.max_sandbox_bytes} bytes")
    digest_, length = sha256, size

    def store_it() -> SandboxOut:
        now = time.time()
        owned = any(b["sha256"] == digest_ for b in store.files.sandboxes_of(owner))
        row, used = store.files.new_sandbox(digest_, length, owner, now, None)
        if not owned:
            why = over_quota(used, length, settings.owner_quota_bytes)
            if why is not None:
                raise FileStoreFull(why)
        if data and not row["complete"]:
            key = box_key(digest_)
            upload = blobs.begin(key, length)
            for at in range(0, max(length, 1), CHUNK):
                blobs.put(key, upload, at, data[at:at + CHUNK], length)
            blobs.finish(key, upload, length)
            store.files.sandbox_set(digest_, complete=1, received=length, upload=None)
            row = {**row, "complete": 1, "received": length}
        store.files.own_sandbox(digest_, owner, now)  # a chunked one: its chunks follow
        return _box_out(row, settings)

    return await run_in_threadpool(store_it)


@router.put("/api/v1/sandboxes/{sha256}", response_model=SandboxOut)
async def sandbox_chunk(request: Request, store: StoreDep, settings: SettingsDep,
                        p: UserAuth, sha256: str = Sha,
                        offset: int = Query(0, ge=0, le=2**63 - 1)) -> SandboxOut:
    """A chunk of a sandbox declared with POST /api/v1/sandboxes?sha256=...&size=...; the
    last one completes it when the SHA-256 matches."""
    owner = _uploader(p)
    data = await request.body()
    blobs = blobs_of(request)

    def put() -> SandboxOut:
        row = store.files.sandbox(sha256)
        if row is None or not any(b["sha256"] == sha256 for b in
                                  store.files.sandboxes_of(owner)):
            raise NotFound(f"no sandbox {sha256} declared by {owner}")
        if row["complete"]:
            return _box_out(row, settings)
        why = chunk_at(offset, row["received"], row["size"], len(data))
        if why is not None:
            raise Conflict(why)
        key = box_key(sha256)
        upload = row["upload"]
        if offset == 0 and upload is None:
            upload = blobs.begin(key, row["size"])
            if upload is not None:
                store.files.sandbox_set(sha256, upload=upload)
        blobs.put(key, upload, offset, data, row["size"])
        HASHING.add(key, offset, data)
        end = offset + len(data)
        if end < row["size"]:
            store.files.sandbox_set(sha256, received=max(end, row["received"]))
            return _box_out({**row, "received": end}, settings)
        blobs.finish(key, upload, row["size"])
        got = HASHING.result(blobs, key, row["size"])
        if got != sha256:
            blobs.delete(key, upload)
            store.files.sandbox_set(sha256, received=0, upload=None)
            raise InvalidInput(f"the sandbox's SHA-256 is {got}, not {sha256}: send it again")
        store.files.sandbox_set(sha256, complete=1, received=row["size"], upload=None)
        return _box_out({**row, "complete": 1}, settings)

    return await run_in_threadpool(put)


@router.get("/api/v1/sandboxes", response_model=list[SandboxOut])
def list_sandboxes(store: StoreDep, settings: SettingsDep, p: UserAuth) -> list[SandboxOut]:
    """The sandboxes this owner sent."""
    owner = _uploader(p)
    return [_box_out(b, settings) for b in store.files.sandboxes_of(owner)]


@router.get("/api/v1/sandboxes/{sha256}", response_class=StreamingResponse,
            responses=BYTES)
def get_sandbox(request: Request, store: StoreDep, p: UserAuth, sha256: str = Sha,
                range_: str | None = Header(None, alias="Range", max_length=200)
                ) -> StreamingResponse:
    """A sandbox's bytes, for an owner who sent it (and that owner's job tokens: the pilot
    fetches a job's input sandboxes with its token) and admins."""
    row = store.files.sandbox(sha256)
    if row is None or not row["complete"] or not (
            p.is_admin or store.files.owns_sandbox(sha256, _uploader(p))):
        raise NotFound(f"no sandbox {sha256}")
    return _stream(blobs_of(request), box_key(sha256), row["size"], sha256, range_,
                   sha256)


# the pilot's code, for cloud machines (their user-data pins its SHA-256) --------------------
@router.get(PILOT_CODE_ROUTE, response_class=Response, responses={
    200: {"content": {"application/x-bzip2": {"schema": {"type": "string",
                                                          "format": "binary"}}},
          "description": "the pilot package (.tar.bz2)"}})
def pilot_code() -> Response:
    """The pilot package a cloud machine installs at boot (no token: it is the public code;
    the machine checks it against the SHA-256 in its user-data)."""
    return Response(pilot_tarball(), media_type="application/x-bzip2",
                    headers={"ETag": f'"{pilot_code_sha256()}"'})
