"""Budgets per group (issue 25): the month, the groups over their budget, and the task queues
the scheduler is left with (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.domain.accounting import Attempt, Machine, account
from controller.domain.budgets import group_spend, month_start, over_budget, withhold
from controller.domain.jobs import Requirements
from controller.domain.taskqueues import TaskQueue

NOW = datetime(2026, 12, 7, 13, 30, tzinfo=UTC).timestamp()
DEC = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def test_month_start():
    assert month_start(NOW) == DEC
    assert month_start(DEC) == DEC
    assert month_start(DEC - 1) == datetime(2026, 11, 1, tzinfo=UTC).timestamp()


def test_group_spend_is_the_groups_share_and_not_the_idle_money():
    # 1 USD/h for 3 h: physics alone for 1 h, biology alone for 1 h, 1 h idle
    m = Machine("m1", "ep", 1.0, DEC, DEC + 3 * 3600)
    ledger = account([Attempt(1, "alice", "physics", "ep", "m1", 1, DEC, DEC + 3600, "done"),
                      Attempt(2, "bob", "biology", "ep", "m1", 1, DEC + 3600, DEC + 7200,
                              "failed")], [m], DEC, NOW)
    assert group_spend(ledger) == {"physics": pytest.approx(1.0),
                                   "biology": pytest.approx(1.0)}


def test_over_budget_and_withheld_queues():
    over = over_budget({"physics": 10.0, "biology": 3.0}, {"physics": 10.0, "biology": 5.0,
                                                         "chemistry": 1.0}, NOW)
    assert set(over) == {"physics"}  # at its budget: over; without spend: within
    assert "spent $10.00 of its $10.00 budget for 2026-12" in over["physics"].reason()
    req = Requirements(cores=1, memory_mb=100, max_runtime=60)
    qs = [TaskQueue(1, req, "alice", "physics", 0, waiting=3),
          TaskQueue(2, req, "carol", "physics", 0, waiting=2),
          TaskQueue(3, req, "bob", "biology", 0, waiting=1)]
    kept, why = withhold(qs, over)
    assert [q.id for q in kept] == [3]
    assert why == ["budget: group physics is over its budget for 2026-12: its 5 waiting job(s) "
                   "in 2 task queue(s) get no new machines"]
    assert withhold(qs, {}) == (tuple(qs), [])
