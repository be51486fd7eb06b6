"""Budgets per group (issue 25): an optional money budget per group per calendar month (UTC).
A group that has spent its budget gets no new machines started for its work until the month
ends; its running work goes on, and its waiting jobs may still take free room on machines
that run anyway. Pure functions over plain data: what a group spent comes from the
accounting (controller/domain/accounting.py: its jobs' share of their machines' cost)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.domain.accounting import Ledger
from controller.domain.taskqueues import TaskQueue


def month_start(now: float) -> float:
    """The start (UTC) of the calendar month `now` is in."""
    t = datetime.fromtimestamp(now, UTC)
    return datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()


def month_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class Overrun:
    """A group that has spent its month's budget."""

    group: str
    spent: float  # USD this month
    budget: float  # USD a month
    month: str  # YYYY-MM (UTC)

    def reason(self) -> str:
        return (f"group {self.group} has spent ${self.spent:,.2f} of its ${self.budget:,.2f} "
                f"budget for {self.month}: no new machines start for its work until the "
                "month ends (its running jobs go on)")


def group_spend(ledger: Ledger) -> dict[str, float]:
    """USD per group in the ledger's window (its jobs' share of their machines' cost; idle
    machines are their endpoints', no group's)."""
    out: dict[str, float] = {}
    for (kind, _, name, _), a in ledger.usage.items():
        if kind == "group":
            out[name] = out.get(name, 0.0) + a.money
    return out


def over_budget(spent: Mapping[str, float], budgets: Mapping[str, float],
                now: float) -> dict[str, Overrun]:
    """The groups with a budget that spent at least all of it this month."""
    month = month_of(now)
    return {g: Overrun(g, spent.get(g, 0.0), b, month) for g, b in budgets.items()
            if spent.get(g, 0.0) >= b}


def withhold(queues: Sequence[TaskQueue], over: Mapping[str, Overrun]
             ) -> tuple[tuple[TaskQueue, ...], list[str]]:
    """The task queues the scheduler may start machines for (those of groups within their
    budget), and one line per over-budget group with waiting work: why it gets none."""
    if not over:
        return tuple(queues), []
    kept: list[TaskQueue] = []
    held: dict[str, tuple[int, int]] = {}
    for q in queues:
        if q.group in over:
            n, k = held.get(q.group, (0, 0))
            held[q.group] = (n + q.waiting, k + 1)
        else:
            kept.append(q)
    reasons = [f"budget: group {g} is over its budget for {over[g].month}: its {n} waiting "
               f"job(s) in {k} task queue(s) get no new machines"
               for g, (n, k) in sorted(held.items())]
    return tuple(kept), reasons

