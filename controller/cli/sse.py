"""Reading a server-sent event stream (GET /api/v1/events): parse its records, and follow it
across reconnections with Last-Event-ID."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: str

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


def parse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Records of an event stream, from its lines (comments and `retry:` skipped)."""
    ev_id: str | None = None
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(ev_id, event, "\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            ev_id = value


def follow(http: httpx.Client, params: dict[str, Any], *, last_id: str | None = None,
           retries: int = 5) -> Iterator[SseEvent]:
    """Events of GET /api/v1/events for ever: reconnects (resuming after the last event
    seen) when the server ends the stream or the connection drops, giving up after `retries`
    failed attempts in a row. Raises httpx.HTTPStatusError on a refusal (4xx)."""
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with http.stream("GET", "/api/v1/events", params=params, headers=headers,
                             timeout=httpx.Timeout(10.0, read=60.0)) as r:
                if 400 <= r.status_code < 500:
                    r.read()
                    r.raise_for_status()
                for ev in parse(r.iter_lines()):
                    failures = 0
                    last_id = ev.id or last_id
                    yield ev
        except httpx.TransportError:
            failures += 1
            if failures > retries:
                raise
            time.sleep(min(2.0 * failures, 10.0))
