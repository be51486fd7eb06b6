"""Accounting (issue 25): a machine's cost split among the attempts it held by core-seconds,
idle time charged to its endpoint, and the sums that must hold."""

from __future__ import annotations

import random

import pytest

from controller.domain.accounting import Attempt, Machine, account, attempt_status, window

H = 3600.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % 86400  # a UTC midnight
DAY = "2023-11-14"


def att(job: int, owner: str, start: float, end: float | None, cores: float = 1,
        machine: str | None = "m1", status: str = "done", group: str = "g") -> Attempt:
    return Attempt(job, owner, group, "ep", machine, cores, T0 + start, None if end is None
                   else T0 + end, status)


def test_split_by_core_seconds_and_idle_to_the_endpoint():
    # m1 costs 1 USD/h for 4 hours; alice 2 cores for hours 0-2, bob 1 core for hours 1-3,
    # nothing in hour 3-4 (idle)
    m = Machine("m1", "ep", 1.0, T0, T0 + 4 * H)
    led = account([att(1, "alice", 0, 2 * H, cores=2), att(2, "bob", H, 3 * H)], [m],
                  T0, T0 + 10 * H)
    rows = {r.name: r for r in led.rows("owner")}
    # hour 0: alice alone (1.0); hour 1: alice 2/3, bob 1/3; hour 2: bob alone (1.0)
    assert rows["alice"].total.money == pytest.approx(1 + 2 / 3)
    assert rows["bob"].total.money == pytest.approx(1 / 3 + 1)
    assert rows["alice"].total.core_hours == pytest.approx(4.0)
    assert rows["bob"].total.core_hours == pytest.approx(2.0)
    assert led.idle == {(DAY, "ep"): pytest.approx(1.0)}
    assert led.spent == {"ep": pytest.approx(4.0)}
    (ep,) = led.rows("endpoint")
    assert ep.total.money == pytest.approx(3.0) and ep.total.attempts == 2


def test_failed_and_interrupted_shown_apart_and_unpriced_machines_cost_nothing():
    m = Machine("m1", "ep", None, T0, T0 + 3 * H)
    led = account([att(1, "alice", 0, H), att(2, "alice", H, 2 * H, status="failed"),
                   att(3, "alice", 2 * H, 3 * H, status=attempt_status("rescheduled"))],
                  [m], T0, T0 + 3 * H)
    (row,) = led.rows("owner")
    assert row.total.attempts == 3 and row.total.money == 0
    assert {s: (a.attempts, a.core_hours) for s, a in row.by_status.items()} == {
        "done": (1, 1.0), "failed": (1, 1.0), "interrupted": (1, 1.0)}
    assert attempt_status("stalled") == "interrupted" and attempt_status(None) == "running"


def test_window_and_days():
    # a running attempt from 23:00 on day 1 into day 2, window starting at 23:30
    m = Machine("m1", "ep", 2.0, T0 + 23 * H, None)
    led = account([att(1, "alice", 23 * H, None, status="running")], [m],
                  T0 + 23.5 * H, T0 + 25 * H)
    rows = led.rows("owner")
    assert [(r.day, round(r.total.core_hours, 6), round(r.total.money, 6)) for r in rows] == [
        (DAY, 0.5, 1.0), ("2023-11-15", 1.0, 2.0)]
    assert rows[0].total.attempts == 1 and rows[1].total.attempts == 0
    assert led.spent == {"ep": pytest.approx(3.0)} and not led.idle


def test_owners_plus_idle_sum_to_the_spend():
    rnd = random.Random(25)
    machines = [Machine(f"m{i}", f"ep{i % 3}", rnd.choice([None, 0.1, 0.37, 2.5]),
                        T0 + rnd.uniform(0, 20 * H), None if i % 4 == 0
                        else T0 + rnd.uniform(21 * H, 60 * H)) for i in range(12)]
    attempts = []
    for j in range(300):
        m = rnd.choice(machines)
        s = rnd.uniform(m.started - H, (m.ended or T0 + 70 * H))
        attempts.append(Attempt(j, rnd.choice("abcde"), rnd.choice(["g1", "g2"]), m.endpoint,
                                m.name, rnd.choice([1, 2, 4]), s,
                                None if rnd.random() < 0.1 else s + rnd.uniform(0, 5 * H),
                                rnd.choice(["done", "failed", "interrupted", "killed"])))
    since, until = T0 + 5 * H, T0 + 72 * H
    led = account(attempts, machines, since, until)
    spent = sum(led.spent.values())
    assert spent > 10
    for by in ("owner", "group", "endpoint"):
        rows = led.rows(by)
        total = sum(r.total.money for r in rows) + sum(led.idle.values())
        assert abs(total - spent) < 1e-9 * spent
    per_ep: dict[str, float] = {}
    for r in led.rows("endpoint"):
        per_ep[r.name] = per_ep.get(r.name, 0.0) + r.total.money
    for (_, ep), v in led.idle.items():
        per_ep[ep] = per_ep.get(ep, 0.0) + v
    assert per_ep == pytest.approx(led.spent, rel=1e-12)
    assert sum(r.total.attempts for r in led.rows("owner")) == sum(
        r.total.attempts for r in led.rows("group"))


def test_window():
    assert window("30d") == 30 * 86400 and window("12h") == 12 * H and window("90m") == 5400
    for bad in ("soon", "30", "-1d", "0s", "99999d", "d"):
        with pytest.raises(ValueError):
            window(bad)
