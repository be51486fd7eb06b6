"""Endpoints as the store keeps them: their state, the marks that steer their plans (down, up)
and the back-off of a failing endpoint. Pure: no I/O, time injected."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EndpointState(StrEnum):
    """What the operator sees of an endpoint (`cloudpilot endpoints`)."""

    OK = "ok"  # its kind observes and applies without error
    ERROR = "error"  # its last observe or apply failed (message says why; back-off)
    DOWN = "down"  # an operator took it down (`cloudpilot down`) until `up`


@dataclass(frozen=True)
class Backoff:
    """Consecutive failures of an endpoint, and when to try again (doubling delays)."""

    failures: int = 0
    not_before: float = 0.0
    base: float = 5.0
    cap: float = 300.0

    def failed(self, now: float) -> Backoff:
        delay = min(self.cap, self.base * 2 ** self.failures)
        return Backoff(self.failures + 1, now + delay, self.base, self.cap)

    def ready(self, now: float) -> bool:
        return now >= self.not_before

    def wait(self, now: float) -> float:
        return max(0.0, self.not_before - now)


@dataclass(frozen=True)
class Endpoint:
    name: str
    driver: str
    config: Mapping[str, Any]  # its configuration when the controller last started
    last_seq: int  # the highest machine number given out (names are never reused)
    state: EndpointState
    message: str
    updated_at: float | None
    down_by: str | None  # who took it down (None: it is up)
    up_by: str | None  # who asked for its next plan to be applied at once
    backoff: Backoff
    drift: str | None = None  # what the last drift check found (None: no drift)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Endpoint:
        return cls(
            name=row["name"], driver=row["driver"], config=json.loads(row["config"] or "{}"),
            last_seq=row["last_seq"] or 0, state=EndpointState(row["state"] or "ok"),
            message=row["message"] or "", updated_at=row["updated_at"],
            down_by=row["down_by"], up_by=row["up_by"],
            backoff=Backoff(row["failures"] or 0, row["retry_at"] or 0.0),
            drift=row["drift"])
