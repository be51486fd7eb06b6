"""Plans: each endpoint's proposed changes, their approval, application and outcome."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from controller.domain.plans import Plan, PlanDiff, PlanState, check_transition
from controller.domain.transitions import IllegalTransition
from controller.errors import Conflict, Fenced
from controller.store.sql import Connection, Transactions, one_row

P = PlanState


class PlanStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    # reading -----------------------------------------------------------------------------
    def get(self, plan_id: int) -> Plan:
        with self.store.read() as c:
            row = one_row(c, f"no plan {plan_id}", "SELECT * FROM plans WHERE id = ?", plan_id)
        return Plan.from_row(row)

    def find(self, endpoint: str | None = None, states: Sequence[PlanState] = (),
             limit: int = 100) -> list[Plan]:
        """The newest plans first."""
        where, args = [], []
        if endpoint:
            where.append("endpoint = ?")
            args.append(endpoint)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += [s.value for s in states]
        sql = "SELECT * FROM plans" + (" WHERE " + " AND ".join(where) if where else "")
        with self.store.read() as c:
            rows = c.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Plan.from_row(r) for r in rows]

    def open(self, endpoint: str, state: PlanState) -> Plan | None:
        """The endpoint's oldest plan in `state` (pending or approved)."""
        with self.store.read() as c:
            row = c.execute("SELECT * FROM plans WHERE endpoint = ? AND state = ?"
                            " ORDER BY id LIMIT 1", (endpoint, state.value)).fetchone()
        return Plan.from_row(row) if row else None

    def events(self, plan_id: int) -> list[dict[str, Any]]:
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT at, from_state, to_state, reason FROM plan_events WHERE plan_id = ?"
                " ORDER BY id", (plan_id,))]

    # writing -----------------------------------------------------------------------------
    def _event(self, c: Connection, plan_id: int, old: str | None, new: str,
               reason: str, now: float) -> None:
        c.execute("INSERT INTO plan_events (plan_id, at, from_state, to_state, reason)"
                  " VALUES (?, ?, ?, ?, ?)", (plan_id, now, old, new, reason))

    def _move(self, c: Connection, plan_id: int, new: PlanState, reason: str | None,
              now: float, **fields: Any) -> None:
        row = one_row(c, f"no plan {plan_id}", "SELECT state FROM plans WHERE id = ?", plan_id)
        old = P(row["state"])
        try:
            default = check_transition(old, new)
        except IllegalTransition:
            raise Conflict(f"plan {plan_id} is {old.value}; it cannot become {new.value}") \
                from None
        sets = ", ".join(f"{k} = ?" for k in ["state", "updated_at", *fields])
        c.execute(f"UPDATE plans SET {sets} WHERE id = ?",
                  (new.value, now, *fields.values(), plan_id))
        self._event(c, plan_id, old.value, new.value, reason or default, now)

    def propose(self, diff: PlanDiff, reasons: Sequence[str], asked_by: str,
                cost_per_hour: float | None, note: str = "",
                now: float | None = None) -> tuple[Plan, bool]:
        """Record a wanted change as a pending plan. The endpoint's pending plan is kept (and
        refreshed) when it makes the same change; otherwise the new plan supersedes it.
        Returns the plan and whether it is new."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = c.execute("SELECT * FROM plans WHERE endpoint = ? AND state = 'pending'"
                            " ORDER BY id DESC LIMIT 1", (diff.endpoint,)).fetchone()
            if row is not None and Plan.from_row(row).diff.same_change(diff) \
                    and row["asked_by"] == asked_by:
                c.execute("UPDATE plans SET wanted = ?, reasons = ?, detail = ?, message = ?,"
                          " cost_per_hour = ?, specs = ?, engine_plan = ?, updated_at = ?"
                          " WHERE id = ?",
                          (json.dumps(list(diff.wanted)), json.dumps(list(reasons)),
                           diff.detail, note, cost_per_hour, _specs(diff),
                           diff.engine_plan or None, now, row["id"]))
                plan_id, new = row["id"], False
            else:
                cur = c.execute(
                    "INSERT INTO plans (endpoint, state, creates, deletes, wanted, reasons,"
                    " detail, asked_by, message, cost_per_hour, specs, engine_plan, created_at,"
                    " updated_at) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " RETURNING id",
                    (diff.endpoint, json.dumps(list(diff.create)), json.dumps(list(diff.delete)),
                     json.dumps(list(diff.wanted)), json.dumps(list(reasons)), diff.detail,
                     asked_by, note, cost_per_hour, _specs(diff), diff.engine_plan or None,
                     now, now))
                plan_id, new = int(cur.fetchone()[0]), True
                self._event(c, plan_id, None, P.PENDING.value, f"asked by {asked_by}", now)
                for old in c.execute("SELECT id FROM plans WHERE endpoint = ? AND"
                                     " state = 'pending' AND id != ?",
                                     (diff.endpoint, plan_id)).fetchall():
                    self._move(c, old["id"], P.SUPERSEDED, f"replaced by plan {plan_id}", now,
                               message=f"replaced by plan {plan_id}")
            row = c.execute("SELECT * FROM plans WHERE id = ?", (plan_id,)).fetchone()
        return Plan.from_row(row), new

    def withdraw(self, endpoint: str, why: str, now: float | None = None,
                 states: Sequence[PlanState] = (P.PENDING,)) -> list[int]:
        """Supersede the endpoint's pending (or also approved) plans: no longer wanted."""
        now = time.time() if now is None else now
        sql = (f"SELECT id FROM plans WHERE endpoint = ? AND state IN"
               f" ({','.join('?' * len(states))})")
        args = (endpoint, *(s.value for s in states))
        with self.store.read() as c:  # most ticks: nothing open, no write transaction
            if c.execute(sql, args).fetchone() is None:
                return []
        with self.store.tx() as c:
            ids = [r["id"] for r in c.execute(sql, args)]
            for pid in ids:
                self._move(c, pid, P.SUPERSEDED, why, now, message=why)
        return ids

    def approve(self, plan_id: int, by: str, now: float | None = None) -> Plan:
        """Approve a pending plan (the endpoint's worker applies it after the next tick)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            self._move(c, plan_id, P.APPROVED, f"approved by {by}", now, approved_by=by)
        return self.get(plan_id)

    def start_applying(self, plan_id: int, now: float | None = None, *,
                       epoch: int = 0) -> Plan:
        """The endpoint's worker takes up an approved plan, under the leader's `epoch` (its
        fencing token: the result is recorded only under it)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            self._move(c, plan_id, P.APPLYING, None, now, epoch=epoch)
        return self.get(plan_id)

    def fence(self, plan_id: int, epoch: int) -> None:
        """In the transaction that records an apply's result: refuse it (Fenced) unless the
        plan is still applied under `epoch` and no later leader has taken over. On PostgreSQL
        the leader row is locked, so a take-over waits for this transaction to end."""
        lock = " FOR UPDATE" if self.store.dialect.shared else ""
        with self.store.tx() as c:
            row = one_row(c, f"no plan {plan_id}", "SELECT epoch FROM plans WHERE id = ?",
                          plan_id)
            lead = c.execute("SELECT epoch FROM leader WHERE id = 1" + lock).fetchone()
        ours, now_leading = row["epoch"] or 0, lead["epoch"] if lead else 0
        if ours != epoch or now_leading > epoch:
            raise Fenced(f"plan {plan_id}: a deposed leader (epoch {epoch}) "
                         f"refused: the plan is applied under epoch {ours}, the loop's "
                         f"leader is now epoch {now_leading}")

    def finish(self, plan_id: int, state: PlanState, message: str,
               now: float | None = None) -> None:
        """A plan being applied was applied (or failed to be)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            self._move(c, plan_id, state, message or None, now, message=message)

    def resume_interrupted(self, endpoint: str, now: float | None = None) -> list[int]:
        """Plans a controller was applying when it stopped go back to approved: the next
        tick applies them again (drivers are idempotent per machine name)."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            ids = [r["id"] for r in c.execute(
                "SELECT id FROM plans WHERE endpoint = ? AND state = ?",
                (endpoint, P.APPLYING.value))]
            for pid in ids:
                self._move(c, pid, P.APPROVED, None, now,
                           message="interrupted by a controller restart; applied again")
        return ids


def _specs(diff: PlanDiff) -> str | None:
    return json.dumps({k: dict(v) for k, v in diff.specs.items()}) if diff.specs else None
