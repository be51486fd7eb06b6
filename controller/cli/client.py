"""A small HTTP client for the controller's user and admin API (used by the CLI and the demo)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

# Answers after which the same request may succeed: the controller restarting or busy.
RETRY_STATUSES = frozenset({0, 502, 503, 504})


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0,
                 retry_for: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retry_for = retry_for  # how long a submission is retried (same Idempotency-Key)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiError(0, f"cannot reach the controller at {self.http.base_url}: {e}") from e
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, str(detail))
        return r.json() if r.content else None

    def retrying(self, method: str, path: str, **kw: Any) -> Any:
        """`request`, retried with back-off for `retry_for` seconds while the controller is
        unreachable or answers 502/503/504. Only for requests that are safe to repeat."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.2
        while True:
            try:
                return self.request(method, path, **kw)
            except ApiError as e:
                if e.status not in RETRY_STATUSES or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def submit(self, jobs: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
        """Submit jobs under one Idempotency-Key (a new one unless given), retried until the
        controller answers: a retry of a submission that was stored answers its ids again."""
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        if len(jobs) == 1:
            return self.retrying("POST", "/api/v1/jobs", json=jobs[0], headers=headers)
        return self.retrying("POST", "/api/v1/jobs/bulk", json={"jobs": jobs}, headers=headers)

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/api/v1/jobs", params=params)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/jobs/{job_id}")

    def events(self, job_id: int) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/jobs/{job_id}/events")

    def output(self, job_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/jobs/{job_id}/output")

    def kill(self, job_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/jobs/{job_id}/kill")

    def machines(self, endpoint: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"all": all}
        if endpoint:
            params["endpoint"] = endpoint
        return self.request("GET", "/api/v1/machines", params=params)

    def endpoints(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/endpoints")

    def taskqueues(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/taskqueues")

    def shares(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/shares")

    def summary(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/summary")

    def overview(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/overview")

    def plans(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/api/v1/plans", params=params)

    def plan(self, plan_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/plans/{plan_id}")

    def approve(self, plan_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/plans/{plan_id}/approve")

    def up(self, endpoint: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/endpoints/{endpoint}/up")

    def down(self, endpoint: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/endpoints/{endpoint}/down")

    def explain(self, endpoint: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/endpoints/{endpoint}/explain")

    def tick(self, tick_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/ticks/{tick_id}")

    def ticks(self, endpoint: str | None = None, changes: bool = False,
              limit: int = 20) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"changes": changes, "limit": limit}
        if endpoint:
            params["endpoint"] = endpoint
        return self.request("GET", "/api/v1/ticks", params=params)

    def hosts(self, endpoint: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/endpoints/{endpoint}/hosts")

    def host_events(self, endpoint: str, host: str | None = None,
                    limit: int = 20) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if host:
            params["host"] = host
        return self.request("GET", f"/api/v1/endpoints/{endpoint}/hosts/events", params=params)

    def join_host(self, endpoint: str, **host: Any) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/endpoints/{endpoint}/hosts", json=host)

    def leave_host(self, endpoint: str, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/endpoints/{endpoint}/hosts/{name}")
