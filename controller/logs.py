"""The controller's logs: one line per request and per loop decision, as text or (with
`log_format = "json"`) one JSON object a line with the endpoint, job, machine and pilot as
fields of their own, for a log pipeline to index."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FIELDS = ("endpoint", "job", "machine", "pilot")
request_log = logging.getLogger("cloudpilot.http")
_NAMED = re.compile(r"endpoint ([a-z][a-z0-9-]*): ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        for f in (*FIELDS, "method", "path", "status", "duration_ms"):
            value = getattr(record, f, None)
            if value is not None:
                doc[f] = value
        m = _NAMED.match(doc["message"])  # the loop's lines start "endpoint NAME: ..."
        if m and "endpoint" not in doc:
            doc["endpoint"] = m.group(1)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(log_format: str) -> None:
    """Configure the root logger once, as text or JSON lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _fields(params: dict[str, Any]) -> dict[str, Any]:
    """What a route's path names: /jobs/{job_id}, /pilots/{pilot_id}, /endpoints/{name}..."""
    out: dict[str, Any] = {}
    for key, field in (("job_id", "job"), ("pilot_id", "pilot"), ("endpoint", "endpoint"),
                       ("name", "endpoint"), ("machine", "machine")):
        if key in params:
            out[field] = params[key]
    return out


class RequestLog:
    """ASGI middleware: one log line per HTTP request (method, path, status, duration, and the
    job, pilot or endpoint its path names). Streams are logged when they end. Query strings
    are left out: they are not needed to follow a request, and nothing secret goes there."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ms = round((time.perf_counter() - started) * 1000, 1)
            path = scope.get("path", "")
            extra = {"method": scope.get("method"), "path": path, "status": status,
                     "duration_ms": ms, **_fields(scope.get("path_params") or {})}
            request_log.info("%s %s %s %.1fms", scope.get("method"), path, status, ms,
                             extra=extra)
