"""The accounting read: the attempts and the machines (with their prices) that overlap a
window, as plain records for controller.domain.accounting; and what the what-if replays
(issue 25): the jobs submitted in a window with their real run times."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.domain.accounting import Attempt, Ledger, Machine, account, attempt_status
from controller.store.views import FINAL_MACHINE_STATES, machine_ended, machine_price

if TYPE_CHECKING:
    from controller.store.db import Store

_FINAL = ", ".join(f"'{s}'" for s in FINAL_MACHINE_STATES)


def usage(store: Store, prices: Mapping[str, float], since: float, until: float) -> Ledger:
    """Core-hours and money per owner, group and endpoint by day in [since, until)."""
    with store.read() as c:
        machines = _machines(c, prices, since, until)
        attempts = c.execute(
            "SELECT a.job_id, a.machine, a.endpoint, a.started_at, a.ended_at, a.outcome,"
            " j.owner, j.grp, j.requirements FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.started_at < ? AND (a.ended_at IS NULL OR a.ended_at >= ?)",
            (until, since)).fetchall()
    return account(
        [Attempt(r["job_id"], r["owner"], r["grp"] or "", r["endpoint"] or "", r["machine"],
                 float(json.loads(r["requirements"] or "{}").get("cores") or 1),
                 r["started_at"], r["ended_at"], attempt_status(r["outcome"]))
         for r in attempts],
        machines, since, until)


def _machines(c: Any, prices: Mapping[str, float], since: float, until: float
              ) -> list[Machine]:
    rows = c.execute(
        "SELECT name, endpoint, state, created_at, updated_at, info FROM machines"
        f" WHERE created_at < ? AND (state NOT IN ({_FINAL}) OR updated_at >= ?)",
        (until, since)).fetchall()
    return [Machine(r["name"], r["endpoint"] or "", machine_price(r, prices), r["created_at"],
                    machine_ended(r)) for r in rows]


def machines(store: Store, prices: Mapping[str, float], since: float, until: float
             ) -> list[Machine]:
    """The machines alive at some time in [since, until), with their prices."""
    with store.read() as c:
        return _machines(c, prices, since, until)


@dataclass(frozen=True)
class RecordedJob:
    """A job submitted in the window, as the what-if replays it."""

    id: int
    owner: str
    group: str
    requirements: dict[str, Any]
    submitted: float
    state: str
    run: float | None  # seconds its last ended attempt ran (None: no attempt ended)
    endpoint: str | None  # where its last attempt ran
    attempts: int


def recorded_jobs(store: Store, since: float, until: float) -> list[RecordedJob]:
    """The jobs submitted in [since, until), oldest first, with their attempts' outcome."""
    with store.read() as c:
        rows = c.execute(
            "SELECT j.id, j.owner, j.grp, j.requirements, j.created_at, j.state, a.endpoint,"
            " a.started_at, a.ended_at FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id"
            " WHERE j.created_at >= ? AND j.created_at < ? ORDER BY j.id, a.n",
            (since, until)).fetchall()
    out: list[RecordedJob] = []
    last: dict[str, Any] = {}
    for r in rows:
        if last.get("id") != r[0]:
            if last:
                out.append(RecordedJob(**last))
            last = {"id": r[0], "owner": r[1], "group": r[2] or r[1],
                    "requirements": json.loads(r[3] or "{}"), "submitted": r[4],
                    "state": r[5], "run": None, "endpoint": None, "attempts": 0}
        if r[7] is not None:
            last["attempts"] += 1
            last["endpoint"] = r[6]
            last["run"] = None if r[8] is None else max(r[8] - r[7], 0.0)
    if last:
        out.append(RecordedJob(**last))
    out.sort(key=lambda j: (j.submitted, j.id))
    return out

