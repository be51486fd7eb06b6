"""The Python client of cloudpilot's API: the same code the `cloudpilot` command uses.

    from cloudpilot.client import Client

    c = Client()  # CLOUDPILOT_URL (default http://127.0.0.1:8080) and CLOUDPILOT_TOKEN
    ids = c.submit([{"executable": "/bin/sh", "arguments": ["-c", "echo 1,2 > out.csv"],
                     "outputs": ["out.csv"]}])["ids"]
    for job in c.wait(ids):
        print(job["state"], c.read(job["id"], "out.csv"))

Jobs are the API's job documents (see GET /openapi.json, JobIn). Every submission carries an
Idempotency-Key and is retried while the controller restarts, so a script that is retried
itself does not submit twice. Errors are ApiError (status, detail)."""

from __future__ import annotations

import os

from controller.cli.client import ApiClient, ApiError

__all__ = ["ApiError", "Client"]

DEFAULT_URL = "http://127.0.0.1:8080"


class Client(ApiClient):
    """A controller's API for one token: submit (one or many jobs, with an Idempotency-Key),
    wait, follow_output, files, read, download, upload_sandbox, jobs, job, events, output,
    kill."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 30.0, retry_for: float = 60.0) -> None:
        token = token or os.environ.get("CLOUDPILOT_TOKEN")
        if not token:
            raise ApiError(0, "no token: pass token= or set CLOUDPILOT_TOKEN")
        super().__init__(url or os.environ.get("CLOUDPILOT_URL", DEFAULT_URL), token,
                         timeout=timeout, retry_for=retry_for)
