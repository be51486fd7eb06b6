"""The pilot's HTTP client (urllib): JSON in and out, retries with back-off on connection
errors and 5xx, so a controller restart loses nothing, until its `stopped` says give up (the
pilot is stopping, or has been cut off from its controller too long: see `last_contact`)."""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pilot.client")


class ClientError(Exception):
    """The controller refused the request (4xx): retrying the same request will not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class Client:
    def __init__(self, base_url: str, token: str, *, stopped: Callable[[], bool] = lambda: False,
                 max_backoff: float = 15.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.stopped = stopped
        self.max_backoff = max_backoff
        self.last_contact = time.monotonic()  # when the controller last answered (below 500)

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0,
             retry: bool = True, raw: bool = False) -> Any:
        """Send a request; on connection errors and 5xx retry with back-off until it works
        (or `stopped()` says give up, when the last error is raised)."""
        delay = 0.5
        while True:
            try:
                return self._once(method, path, body, timeout, raw)
            except ClientError as e:
                if e.status < 500 or not retry:
                    raise
                err: Exception = e
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                if not retry:
                    raise
                err = e
            if self.stopped():
                raise err
            log.warning("controller unreachable (%s); retrying in %.1fs", err, delay)
            time.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, self.max_backoff)

    def _once(self, method: str, path: str, body: Any, timeout: float, want_raw: bool) -> Any:
        """`body`: JSON, or bytes sent as they are; `want_raw`: answer the body's bytes."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/octet-stream"
                           if isinstance(body, bytes) else "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                self.last_contact = time.monotonic()
                return raw if want_raw else json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code < 500:
                self.last_contact = time.monotonic()
            raw = e.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise ClientError(e.code, str(detail)) from None
