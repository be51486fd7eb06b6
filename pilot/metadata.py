"""The EC2 instance metadata service: is this spot instance about to be interrupted?

`GET /latest/meta-data/spot/instance-action` answers 404 until EC2 schedules a stop or
termination, then `{"action": "terminate", "time": "..."}` (about two minutes ahead). IMDSv2
(a session token from `PUT /latest/api/token`) is tried first, IMDSv1 after. The base URL is
configurable so tests can serve it on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"


def _token(base: str, timeout: float) -> str | None:
    req = urllib.request.Request(base + TOKEN_PATH, method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return str(r.read().decode().strip()) or None
    except (urllib.error.URLError, OSError):
        return None  # IMDSv1 only, or not on EC2


def spot_notice(base: str, timeout: float = 2.0) -> str | None:
    """None while no interruption is scheduled; else what and when ('terminate at T')."""
    base = base.rstrip("/")
    headers = {}
    token = _token(base, timeout)
    if token:
        headers["X-aws-ec2-metadata-token"] = token
    req = urllib.request.Request(base + ACTION_PATH, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None  # 404: nothing scheduled (or the service is not there)
    try:
        doc = json.loads(body)
        return f"{doc.get('action', 'stop')} at {doc.get('time', 'soon')}"
    except (ValueError, AttributeError):
        return body.strip()[:200] or "interruption scheduled"
