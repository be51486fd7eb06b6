"""The accounting read: the attempts and the machines (with their prices) that overlap a
window, as plain records for controller.domain.accounting."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from controller.domain.accounting import Attempt, Ledger, Machine, account, attempt_status
from controller.store.views import FINAL_MACHINE_STATES, machine_ended, machine_price

if TYPE_CHECKING:
    from controller.store.db import Store

_FINAL = ", ".join(f"'{s}'" for s in FINAL_MACHINE_STATES)


def usage(store: Store, prices: Mapping[str, float], since: float, until: float) -> Ledger:
    """Core-hours and money per owner, group and endpoint by day in [since, until)."""
    with store.read() as c:
        attempts = c.execute(
            "SELECT a.job_id, a.machine, a.endpoint, a.started_at, a.ended_at, a.outcome,"
            " j.owner, j.grp, j.requirements FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.started_at < ? AND (a.ended_at IS NULL OR a.ended_at >= ?)",
            (until, since)).fetchall()
        machines = c.execute(
            "SELECT name, endpoint, state, created_at, updated_at, info FROM machines"
            f" WHERE created_at < ? AND (state NOT IN ({_FINAL}) OR updated_at >= ?)",
            (until, since)).fetchall()
    return account(
        [Attempt(r["job_id"], r["owner"], r["grp"] or "", r["endpoint"] or "", r["machine"],
                 float(json.loads(r["requirements"] or "{}").get("cores") or 1),
                 r["started_at"], r["ended_at"], attempt_status(r["outcome"]))
         for r in attempts],
        [Machine(r["name"], r["endpoint"] or "", machine_price(r, prices), r["created_at"],
                 machine_ended(r)) for r in machines],
        since, until)
