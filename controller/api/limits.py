"""Limits checked before a request body is parsed: its size (413), its encoding and the text it
can hold (422: valid UTF-8, and no NUL character or lone surrogate in any JSON string, which
could be neither stored nor answered), and the number of jobs in a bulk submission (checked
before any job is validated).

`BodyLimit` is a plain ASGI middleware: it reads the body up to `max_bytes` (a larger
Content-Length is refused at once, without reading), then hands the buffered body on."""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# the controller's max_bulk_jobs, for BulkIn's check before its jobs are validated
MAX_BULK_JOBS: contextvars.ContextVar[int] = contextvars.ContextVar("max_bulk_jobs",
                                                                    default=10_000)


_ESCAPE = re.compile(rb"(\\+)u([0-9a-fA-F]{4})")


def bad_text(body: bytes) -> str | None:
    """Where a JSON body spells a NUL character or a lone surrogate (as a \\u escape: raw
    control characters are invalid JSON, raw surrogates invalid UTF-8), if it does."""
    if b"\\u" not in body:
        return None
    pending: int | None = None  # where the low half of a surrogate pair must follow
    for m in _ESCAPE.finditer(body):
        if len(m.group(1)) % 2 == 0:
            continue  # an escaped backslash followed by the letter u
        at = m.end(1) - 1
        cp = int(m.group(2), 16)
        low = 0xDC00 <= cp <= 0xDFFF
        if pending is not None and not (low and at == pending):
            return f"a lone surrogate at byte {pending - 6}"
        if cp == 0:
            return f"a NUL character (\\u0000) at byte {at}"
        if 0xD800 <= cp <= 0xDBFF:
            pending = m.end()
        elif low and pending is None:
            return f"a lone surrogate at byte {at}"
        else:
            pending = None
    return f"a lone surrogate at byte {pending - 6}" if pending is not None else None


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    def __init__(self, app: App, max_bytes: int, max_bulk_jobs: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_bulk_jobs = max_bulk_jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        MAX_BULK_JOBS.set(self.max_bulk_jobs)
        headers = dict(scope.get("headers") or [])
        too_big = {"detail": f"the request body is larger than {self.max_bytes} bytes"}
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.max_bytes:
            await _answer(send, 413, too_big)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _answer(send, 413, too_big)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and b"json" in headers.get(b"content-type", b""):
            try:
                body.decode("utf-8")
                found = bad_text(body)
                msg = f"a string holds {found}: text must be valid Unicode" if found else ""
            except UnicodeDecodeError as e:
                msg = f"the body is not valid UTF-8 (byte {e.start})"
            if msg:
                await _answer(send, 422, {"detail": "invalid request: " + msg, "errors": [msg]})
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
