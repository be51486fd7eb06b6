"""Accounting: core-hours and money per owner, group and endpoint, by day (UTC), from the
jobs' attempts and their machines' prices. Pure functions over plain data.

While a machine holds attempts, its cost is split among them by cores (so over time by
core-seconds); while it holds none, its cost is the endpoint's idle money, never a user's.
So per-owner money plus idle money is exactly what the endpoints spent in the window."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Literal

Kind = Literal["owner", "group", "endpoint"]
KINDS: tuple[Kind, ...] = ("owner", "group", "endpoint")
STATUSES = ("done", "failed", "interrupted", "killed", "running")
# an attempt's outcome (the state its job left the pilot for) -> its status here
_STATUS = {"done": "done", "failed": "failed", "killed": "killed",
           "rescheduled": "interrupted", "stalled": "interrupted"}
DAY = 86400.0


def attempt_status(outcome: str | None) -> str:
    """done, failed, interrupted (the pilot was interrupted or lost), killed, or running."""
    return "running" if outcome is None else _STATUS.get(outcome, "interrupted")


@dataclass(frozen=True)
class Attempt:
    job_id: int
    owner: str
    group: str
    endpoint: str
    machine: str | None
    cores: float
    started: float
    ended: float | None  # None: still held
    status: str  # one of STATUSES


@dataclass(frozen=True)
class Machine:
    name: str
    endpoint: str
    price: float | None  # USD per hour; None: unknown (counted as 0)
    started: float
    ended: float | None  # None: alive


@dataclass
class Amount:
    attempts: int = 0
    core_hours: float = 0.0
    money: float = 0.0

    def add(self, other: Amount) -> None:
        self.attempts += other.attempts
        self.core_hours += other.core_hours
        self.money += other.money


@dataclass
class UsageRow:
    day: str  # YYYY-MM-DD, UTC
    name: str  # the owner, group or endpoint
    total: Amount = field(default_factory=Amount)
    by_status: dict[str, Amount] = field(default_factory=dict)


@dataclass
class Ledger:
    """What `account` found: per (kind, day, name, status) the attempts begun (counted on the
    day each began, or the window's first), core-hours and money; idle money per (day,
    endpoint); what each endpoint's machines cost in the window."""

    usage: dict[tuple[str, str, str, str], Amount] = field(default_factory=dict)
    idle: dict[tuple[str, str], float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def rows(self, by: Kind) -> list[UsageRow]:
        """One row per (day, name) of kind `by`, oldest day first, with its amounts per
        status apart (failed and interrupted attempts shown apart from done ones)."""
        out: dict[tuple[str, str], UsageRow] = {}
        for (kind, day, name, status), a in sorted(self.usage.items()):
            if kind != by:
                continue
            row = out.setdefault((day, name), UsageRow(day, name))
            row.total.add(a)
            row.by_status.setdefault(status, Amount()).add(a)
        return list(out.values())


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def window(text: str) -> float:
    """A window's length in seconds from "30d", "12h", "90m" or "45s" (ValueError, with what
    was wrong, for anything else)."""
    num, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(num) * _UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"bad window {text[:20]!r}: expected a number and a unit, d, h, m "
                         "or s (e.g. 30d)") from None
    if not 0 < seconds <= 3660 * 86400:
        raise ValueError(f"bad window {text[:20]!r}: from 1s to 3660d")
    return seconds


def moment(text: str, now: float) -> float:
    """A time from a window back from now ("7d", "12h") or an ISO 8601 time (UTC unless it
    says otherwise); ValueError, with what was wrong, for anything else."""
    try:
        return now - window(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text[:30]!r}: a window back from now (7d, 12h, 90m) or "
                         "an ISO 8601 time (2026-12-01T00:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def _days(a: float, b: float) -> Iterable[tuple[str, float, float]]:
    """[a, b) cut at UTC midnights: (day, start, end) pieces."""
    while a < b:
        end = min((a // DAY + 1) * DAY, b)
        yield day_of(a), a, end
        a = end


def account(attempts: Iterable[Attempt], machines: Iterable[Machine], since: float,
            until: float) -> Ledger:
    """Core-hours and money in [since, until) per owner, group and endpoint, by day."""
    ledger = Ledger()
    usage: defaultdict[tuple[str, str, str, str], Amount] = defaultdict(Amount)
    idle: defaultdict[tuple[str, str], float] = defaultdict(float)

    def charge(at: Attempt, day: str, core_hours: float, money: float,
               begun: int = 0) -> None:
        for kind, name in (("owner", at.owner), ("group", at.group),
                           ("endpoint", at.endpoint)):
            a = usage[(kind, day, name, at.status)]
            a.attempts += begun
            a.core_hours += core_hours
            a.money += money

    held: defaultdict[str, list[Attempt]] = defaultdict(list)
    for at in attempts:
        a, b = max(at.started, since), min(until if at.ended is None else at.ended, until)
        if b < a or (b == a and at.started < since):
            continue
        charge(at, day_of(a), 0.0, 0.0, begun=1)
        for day, s, e in _days(a, b):
            charge(at, day, at.cores * (e - s) / 3600.0, 0.0)
        if at.machine is not None:
            held[at.machine].append(at)
    for m in machines:
        a, b = max(m.started, since), min(until if m.ended is None else m.ended, until)
        if b <= a:
            continue
        price = m.price or 0.0
        ledger.spent[m.endpoint] = ledger.spent.get(m.endpoint, 0.0) + price * (b - a) / 3600
        # sweep the machine's life: at each point the attempts it holds change, or a day ends
        edges: list[tuple[float, int, int]] = []  # (time, +1 begins / -1 ends, attempt)
        mine = held.get(m.name, [])
        for i, at in enumerate(mine):
            s = max(at.started, a)
            e = min(b if at.ended is None else at.ended, b)
            if e > s:
                edges += [(s, 1, i), (e, -1, i)]
        edges.sort()
        points = sorted({a, b, *(t for t, _, _ in edges),
                         *(s for _, s, _ in _days(a, b))})
        on: dict[int, float] = {}
        k = 0
        for s, e in pairwise(points):
            while k < len(edges) and edges[k][0] <= s:
                _, step, i = edges[k]
                if step > 0:
                    on[i] = max(mine[i].cores, 1e-9)
                else:
                    on.pop(i, None)
                k += 1
            money = price * (e - s) / 3600.0
            if not on:
                idle[(day_of(s), m.endpoint)] += money
                continue
            cores = sum(on.values())
            for i, c in on.items():
                charge(mine[i], day_of(s), 0.0, money * c / cores)
    ledger.usage = dict(usage)
    ledger.idle = dict(idle)
    return ledger
