"""A small HTTP client for the controller's user and admin API (used by the CLI and the demo)."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

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

    def submit(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        if len(jobs) == 1:
            return self.request("POST", "/api/v1/jobs", json=jobs[0])
        return self.request("POST", "/api/v1/jobs/bulk", json={"jobs": jobs})

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
