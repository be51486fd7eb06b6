"""A small HTTP client for the controller's user and admin API (used by the CLI and the demo)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from controller.domain.files import CHUNK, BadName, check_name

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

    def usage(self, by: str, since: str) -> dict[str, Any]:
        return self.request("GET", "/api/v1/usage", params={"by": by, "since": since})

    def whatif(self, since: str, until: str | None, config: str,
               endpoint: str | None = None) -> dict[str, Any]:
        return self.request("POST", "/api/v1/whatif", json={
            "since": since, "until": until, "config": config, "endpoint": endpoint})

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

    # issue 22: job files, input sandboxes, live output -----------------------------------
    def files(self, job_id: int) -> list[dict[str, Any]]:
        """The job's output files, per attempt."""
        return self.request("GET", f"/api/v1/jobs/{job_id}/files")

    def download(self, job_id: int, into: str | Path, attempt: int | None = None
                 ) -> list[Path]:
        """Download the job's output files (of its newest attempt that has each, or of
        `attempt`) into a directory, each checked against its SHA-256; the paths written."""
        newest: dict[str, dict[str, Any]] = {}
        for f in self.files(job_id):
            if f["complete"] and (attempt is None or f["attempt"] == attempt):
                newest[f["name"]] = f  # listed by attempt: the last one is the newest
        root = Path(into).resolve()
        written = []
        for name, f in sorted(newest.items()):
            try:
                check_name(name)  # a name from the controller, still checked here
            except BadName as e:
                raise ApiError(0, f"refusing to write {name!r}: {e}") from None
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f".{path.name}.part")
            h = hashlib.sha256()
            with self.http.stream("GET", f"/api/v1/jobs/{job_id}/files/{name}",
                                  params={"attempt": f["attempt"]}) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError(r.status_code, r.text)
                with open(part, "wb") as out:
                    for piece in r.iter_bytes(1 << 20):
                        h.update(piece)
                        out.write(piece)
            if h.hexdigest() != f["sha256"]:
                part.unlink()
                raise ApiError(0, f"{name}: downloaded bytes do not match its SHA-256")
            os.replace(part, path)
            written.append(path)
        return written

    def read(self, job_id: int, name: str, attempt: int | None = None) -> bytes:
        """One output file's bytes (of the newest attempt that has it, or `attempt`)."""
        params = {} if attempt is None else {"attempt": attempt}
        r = self.http.get(f"/api/v1/jobs/{job_id}/files/{name}", params=params)
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.text)
        return r.content

    def live(self, job_id: int, after: int = 0, wait: float = 0) -> dict[str, Any]:
        """A running job's output pieces after sequence number `after` (long-polls `wait`)."""
        return self.request("GET", f"/api/v1/jobs/{job_id}/live",
                            params={"after": after, "wait": wait}, timeout=wait + 30)

    def follow_output(self, job_id: int) -> Iterator[dict[str, Any]]:
        """Each piece of a job's live output as it comes, until the job has ended."""
        after = 0
        while True:
            got = self.live(job_id, after, wait=10)
            yield from got["pieces"]
            after = got["next"]
            if not got["pieces"] and got["state"] in ("done", "failed", "killed"):
                return

    def upload_sandbox(self, path: str | Path) -> str:
        """Store a file as an input sandbox (once: the same bytes are not sent twice over
        sessions that find it stored); its SHA-256, for a job's inputs."""
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                h.update(piece)
                size += len(piece)
        digest = h.hexdigest()
        got = self.request("POST", "/api/v1/sandboxes",
                           params={"sha256": digest, "size": size})
        at = got["received"]
        with open(path, "rb") as f:
            while not got["complete"]:
                f.seek(at)
                got = self.request("PUT", f"/api/v1/sandboxes/{digest}",
                                   params={"offset": at}, content=f.read(CHUNK))
                at = got["received"]
        return digest

    def wait(self, ids: list[int], timeout: float | None = None,
             interval: float = 1.0) -> list[dict[str, Any]]:
        """Wait until every job has ended (done, failed, killed); their records."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = set(ids)
        ended: dict[int, dict[str, Any]] = {}
        while left:
            for jid in sorted(left):
                j = self.job(jid)
                if j["state"] in ("done", "failed", "killed"):
                    ended[jid] = j
            left -= set(ended)
            if left:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{len(left)} jobs still not ended: "
                                       f"{sorted(left)[:10]}")
                time.sleep(interval)
        return [ended[i] for i in ids]
