"""Read queries for the dashboard, the event stream and /metrics, plus the fleet samples the
overview's charts draw. Typed records out; the only write is `record_sample`."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from controller.domain.costs import MachineLife
from controller.errors import InvalidInput
from controller.store.sql import Row

if TYPE_CHECKING:
    from controller.store.db import Store

EVENT_KINDS = ("job", "machine", "plan", "endpoint", "host")
_TABLES = {"job": "job_events", "machine": "machine_events", "plan": "plan_events",
           "endpoint": "endpoint_events", "host": "ssh_host_events"}
FINAL_MACHINE_STATES = ("stopped", "lost", "failed")


# events -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """Where a reader of the event stream is: the last id seen in each event table. Its text
    form ("j.m.p.e.h", e.g. "120.7.3.0.2") is the SSE event id, so a client resumes with
    Last-Event-ID."""

    job: int = 0
    machine: int = 0
    plan: int = 0
    endpoint: int = 0
    host: int = 0

    def __str__(self) -> str:
        return ".".join(str(getattr(self, k)) for k in EVENT_KINDS)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        parts = text.strip().split(".")
        if len(parts) != len(EVENT_KINDS) or not all(p.isdigit() and len(p) < 19 for p in parts):
            raise InvalidInput(f"bad event id {text[:40]!r}: expected {len(EVENT_KINDS)} "
                               "numbers separated by dots")
        return cls(*(int(p) for p in parts))

    def at(self, kind: str) -> int:
        return int(getattr(self, kind))

    def moved(self, kind: str, event_id: int) -> Cursor:
        return dataclasses.replace(self, **{kind: max(self.at(kind), event_id)})


@dataclass(frozen=True)
class Event:
    kind: str  # job, machine, plan, endpoint, host
    id: int  # in its kind's table
    at: float
    data: Mapping[str, Any]


_EVENT_SQL = {
    "job": "SELECT e.id, e.at, e.job_id AS job, j.owner, j.name, e.from_state, e.to_state,"
           " e.reason, j.endpoint, j.machine FROM job_events e JOIN jobs j ON j.id = e.job_id"
           " WHERE e.id > ? AND e.id <= ?",
    "machine": "SELECT e.id, e.at, e.machine, m.endpoint, e.from_state, e.to_state, e.reason"
               " FROM machine_events e LEFT JOIN machines m ON m.name = e.machine"
               " WHERE e.id > ? AND e.id <= ?",
    "plan": "SELECT e.id, e.at, e.plan_id AS plan, p.endpoint, e.from_state, e.to_state,"
            " e.reason FROM plan_events e JOIN plans p ON p.id = e.plan_id"
            " WHERE e.id > ? AND e.id <= ?",
    "endpoint": "SELECT id, at, endpoint, state, message FROM endpoint_events"
                " WHERE id > ? AND id <= ?",
    "host": "SELECT id, at, endpoint, host, event, detail FROM ssh_host_events"
            " WHERE id > ? AND id <= ?",
}


SETTLE = 2.0  # PostgreSQL: how far event readers stay behind the newest event (s)


def _top(store: Store, c: Any, table: str) -> int:
    """The id up to which a reader may take a table's events. With one process (SQLite) every
    committed event has a lower id than any event still to commit: the newest. With several
    (PostgreSQL) a transaction may commit id 105 while another still holds 104: readers stay
    SETTLE seconds behind (the store's transactions last milliseconds), so that a cursor never
    moves past an event that commits late."""
    if not store.dialect.shared:
        return int(c.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])
    row = c.execute(f"SELECT id FROM {table} WHERE at <= ? ORDER BY id DESC LIMIT 1",
                    (time.time() - SETTLE,)).fetchone()  # walks back the newest few only
    return int(row[0]) if row else 0


def head(store: Store) -> Cursor:
    """The cursor after every event recorded so far."""
    with store.read() as c:
        return Cursor(*(_top(store, c, _TABLES[k]) for k in EVENT_KINDS))


def events_after(store: Store, cursor: Cursor, *, kinds: tuple[str, ...] = EVENT_KINDS,
                 owner: str | None = None, job: int | None = None,
                 limit: int = 500) -> tuple[list[tuple[Event, Cursor]], Cursor]:
    """Events after `cursor` that the reader may see (job events of `owner` only, when given;
    only job `job`'s events and nothing else, when given), oldest first, each with the cursor
    just after it; and the cursor after everything looked at (it moves past events the
    reader may not see, so the next call does not read them again)."""
    if job is not None:
        kinds = ("job",)
    per_kind: list[list[Event]] = []
    end = cursor
    with store.read() as c:
        for kind in kinds:
            top = _top(store, c, _TABLES[kind])
            sql, args = _EVENT_SQL[kind], list[Any]([cursor.at(kind), top])
            if kind == "job" and owner is not None:
                sql, args = sql + " AND j.owner = ?", [*args, owner]
            if kind == "job" and job is not None:
                sql, args = sql + " AND e.job_id = ?", [*args, job]
            rows = c.execute(sql + " ORDER BY e.id LIMIT ?" if kind in ("job", "machine", "plan")
                             else sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
            per_kind.append([_event(kind, r) for r in rows])
            # everything up to `top` was looked at, unless the page was full
            end = end.moved(kind, rows[-1]["id"] if len(rows) >= limit else top)
    out: list[tuple[Event, Cursor]] = []
    at = cursor
    for ev in _merge(per_kind):
        at = at.moved(ev.kind, ev.id)
        out.append((ev, at))
        if len(out) >= limit:
            return out, at
    return out, end


def _event(kind: str, row: Row) -> Event:
    data = {k: row[k] for k in row.keys() if k not in ("id", "at")}
    return Event(kind, row["id"], row["at"], data)


def _merge(lists: list[list[Event]]) -> Iterator[Event]:
    """Events of several kinds by time; each kind's own order (by id) is kept."""
    import heapq

    return heapq.merge(*lists, key=lambda e: e.at)


# metrics: counts derived from the database ---------------------------------------------------
@dataclass(frozen=True)
class TransitionsSince:
    """Job state changes recorded after some event id: counts by new state, and how long each
    match waited (seconds since the job last became waiting)."""

    counts: dict[str, int]
    match_waits: list[float]
    last_id: int


def job_transitions_since(store: Store, after: int) -> TransitionsSince:
    with store.read() as c:
        top = _top(store, c, "job_events")
        counts = {r[0]: r[1] for r in c.execute(
            "SELECT to_state, COUNT(*) FROM job_events WHERE id > ? AND id <= ?"
            " GROUP BY to_state", (after, top))}
        waits = [r[0] for r in c.execute(
            "SELECT e.at - (SELECT MAX(p.at) FROM job_events p WHERE p.job_id = e.job_id"
            " AND p.id < e.id AND p.to_state = 'waiting') FROM job_events e"
            " WHERE e.id > ? AND e.id <= ? AND e.to_state = 'matched'", (after, top))
            if r[0] is not None]
    return TransitionsSince(counts, waits, top)


@dataclass(frozen=True)
class BootsSince:
    """Machines that came up after some machine event id: (endpoint, seconds from being
    requested to its pilot registering)."""

    boots: list[tuple[str, float]]
    last_id: int


def machine_boots_since(store: Store, after: int) -> BootsSince:
    with store.read() as c:
        top = _top(store, c, "machine_events")
        rows = c.execute(
            "SELECT m.endpoint, e.at - m.created_at FROM machine_events e JOIN machines m"
            " ON m.name = e.machine WHERE e.id > ? AND e.id <= ? AND e.to_state = 'running'"
            " AND e.from_state IN ('requested', 'booting')", (after, top)).fetchall()
    return BootsSince([(r[0], max(r[1], 0.0)) for r in rows], top)


def machine_deliveries(store: Store, endpoint: str, since: float) -> list[
        tuple[str, float | None]]:
    """Issue 24: the endpoint's machines launched since `since`, by pool (priced endpoints):
    (pool, seconds from the launch to its pilot registering; None: it never did, ended by
    its boot_timeout). Machines still booting, and launches the cloud refused, are not
    counted."""
    with store.read() as c:
        rows = c.execute(
            "SELECT m.info, e.to_state, e.at - m.created_at FROM machines m JOIN machine_events e"
            " ON e.machine = m.name WHERE m.endpoint = ? AND m.created_at >= ? AND"
            " ((e.to_state = 'running' AND e.from_state IN ('requested', 'booting')) OR"
            " (e.to_state = 'failed' AND e.from_state = 'booting'))",
            (endpoint, since)).fetchall()
    out: list[tuple[str, float | None]] = []
    for info, to, secs in rows:
        pool = json.loads(info or "{}").get("pool")
        if pool:
            out.append((str(pool), max(float(secs), 0.0) if to == "running" else None))
    return out


def machine_runs(store: Store, endpoint: str, since: float, now: float) -> list[
        tuple[str, float, bool]]:
    """Issue 24: the endpoint's machines launched since `since` whose pilot registered, by
    pool: (pool, seconds they ran until they left `running` or until `now`, whether they
    left it as lost: the cloud or the site took them, an interruption)."""
    with store.read() as c:
        rows = c.execute(
            "SELECT m.name, m.info, e.at, e.from_state, e.to_state FROM machines m JOIN"
            " machine_events e ON e.machine = m.name WHERE m.endpoint = ? AND"
            " m.created_at >= ? AND (e.to_state = 'running' OR e.from_state = 'running')"
            " ORDER BY m.name, e.at, e.id", (endpoint, since)).fetchall()
    up: dict[str, tuple[str, float]] = {}
    out: list[tuple[str, float, bool]] = []
    for name, info, at, src, to in rows:
        if to == "running" and src != "running":
            pool = json.loads(info or "{}").get("pool")
            if pool:
                up[name] = (str(pool), float(at))
        elif src == "running" and name in up:
            pool, t = up.pop(name)
            out.append((pool, max(float(at) - t, 0.0), to == "lost"))
    out.extend((pool, max(now - t, 0.0), False) for pool, t in up.values())
    return out


def jobs_by_owner_state(store: Store) -> list[tuple[str, str, int]]:
    with store.read() as c:
        return [(r[0], r[1], r[2]) for r in c.execute(
            "SELECT owner, state, COUNT(*) FROM jobs GROUP BY owner, state")]


def waiting_by_task_queue(store: Store) -> list[tuple[int, str, int]]:
    """(task queue id, owner, waiting jobs) for each queue with waiting jobs (counted on the
    matcher's partial index of waiting jobs alone, then named)."""
    with store.read() as c:
        # INDEXED BY: SQLite would pick idx_jobs_state and read every waiting row (4x slower)
        counts = c.execute("SELECT tq_id, COUNT(*) FROM jobs INDEXED BY idx_jobs_waiting"
                           " WHERE state = 'waiting' GROUP BY tq_id").fetchall()
        owners = dict(c.execute("SELECT id, owner FROM task_queues").fetchall())
    return [(tq, owners.get(tq, ""), n) for tq, n in counts]


def machines_by_endpoint_state(store: Store) -> list[tuple[str, str, int]]:
    with store.read() as c:
        return [(r[0], r[1], r[2]) for r in c.execute(
            "SELECT endpoint, state, COUNT(*) FROM machines GROUP BY endpoint, state"
            " ORDER BY endpoint, state")]


def endpoint_failures(store: Store) -> dict[str, int]:
    with store.read() as c:
        return dict(c.execute("SELECT endpoint, COUNT(*) FROM endpoint_events"
                              " WHERE state = 'error' GROUP BY endpoint").fetchall())


def plans_by_endpoint_state(store: Store) -> list[tuple[str, str, int]]:
    with store.read() as c:
        return [(r[0], r[1], r[2]) for r in c.execute(
            "SELECT endpoint, state, COUNT(*) FROM plans GROUP BY endpoint, state")]


def pilots_by_endpoint(store: Store) -> dict[str, int]:
    with store.read() as c:
        return dict(c.execute("SELECT endpoint, COUNT(*) FROM pilots GROUP BY endpoint")
                    .fetchall())


def machine_lives(store: Store, prices: Mapping[str, float]) -> list[MachineLife]:
    """Every machine with its hourly price (the one it was started at on a priced endpoint,
    else its endpoint's configured cost in `prices`, else 0) and lifetime."""
    with store.read() as c:
        rows = c.execute("SELECT endpoint, state, created_at, updated_at, info"
                         " FROM machines").fetchall()
    return [MachineLife(r["endpoint"], machine_price(r, prices) or 0.0, r["created_at"],
                        machine_ended(r)) for r in rows]


def machine_price(r: Row, prices: Mapping[str, float]) -> float | None:
    """A machine row's hourly price: the one it was started at (its info's), else its
    endpoint's configured cost, else None."""
    info = json.loads(r["info"]) if r["info"] else {}
    price = info.get("price") or prices.get(r["endpoint"])
    return None if price is None else float(price)


def machine_ended(r: Row) -> float | None:
    return r["updated_at"] if r["state"] in FINAL_MACHINE_STATES else None


# the dashboard ------------------------------------------------------------------------------
JobSort = Literal["new", "old", "changed"]
PAGE_COLUMNS = ("id", "name", "owner", "state", "tq_id", "endpoint", "machine", "exit_code",
                "created_at", "updated_at", "reason", "retries", "reschedules")


@dataclass(frozen=True)
class JobRow:
    id: int
    name: str
    owner: str
    state: str
    task_queue: int
    endpoint: str | None
    machine: str | None
    exit_code: int | None
    created_at: float
    updated_at: float
    reason: str | None
    retries: int
    reschedules: int

    @classmethod
    def from_row(cls, r: Row) -> JobRow:
        return cls(r["id"], r["name"] or "", r["owner"], r["state"], r["tq_id"], r["endpoint"],
                   r["machine"], r["exit_code"], r["created_at"], r["updated_at"], r["reason"],
                   r["retries"], r["reschedules"])


@dataclass(frozen=True)
class JobPage:
    rows: list[JobRow]
    next_after: str | None  # the keyset to pass as `after` for the next page; None: last


def job_page(store: Store, *, state: str | None = None, owner: str | None = None,
             endpoint: str | None = None, task_queue: int | None = None,
             sort: JobSort = "new", after: str | None = None, size: int = 50) -> JobPage:
    """One page of jobs by keyset: `after` is the previous page's `next_after` (an id, or
    "updated_at:id" when sorted by last change), so every page costs the same."""
    where: list[str] = []
    args: list[Any] = []
    for col, val in (("state", state), ("owner", owner), ("endpoint", endpoint),
                     ("tq_id", task_queue)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    if after:
        try:
            if sort == "changed":
                t, _, i = after.partition(":")
                where.append("(updated_at, id) < (?, ?)")
                args += [float(t), int(i)]
            else:
                where.append("id < ?" if sort == "new" else "id > ?")
                args.append(int(after))
        except ValueError:
            raise InvalidInput(f"bad page key {after[:40]!r}") from None
    order = {"new": "id DESC", "old": "id", "changed": "updated_at DESC, id DESC"}[sort]
    sql = (f"SELECT {', '.join(PAGE_COLUMNS)} FROM jobs"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY {order} LIMIT ?")
    with store.read() as c:
        rows = [JobRow.from_row(r) for r in c.execute(sql, (*args, size + 1))]
    more = len(rows) > size
    rows = rows[:size]
    nxt = None
    if more and rows:
        last = rows[-1]
        nxt = f"{last.updated_at!r}:{last.id}" if sort == "changed" else str(last.id)
    return JobPage(rows, nxt)


def owners(store: Store) -> list[str]:
    with store.read() as c:
        return [r[0] for r in c.execute("SELECT name FROM users ORDER BY name")]


@dataclass(frozen=True)
class Sample:
    at: float
    waiting: int
    running: int
    machines: int
    spend_rate: float


def record_sample(store: Store, now: float, every: float, keep: float,
                  prices: Mapping[str, float]) -> bool:
    """Keep a sample of the fleet if the last one is `every` seconds old; drop samples older
    than `keep` seconds. Returns whether one was taken."""
    with store.read() as c:
        last = c.execute("SELECT MAX(at) FROM samples").fetchone()[0]
    if last is not None and now - last < every:
        return False
    jobs = store.jobs.counts()
    with store.read() as c:
        machines = c.execute("SELECT COUNT(*) FROM machines WHERE state IN"
                             " ('requested', 'booting', 'running', 'stopping')").fetchone()[0]
    rate = sum(m.price for m in machine_lives(store, prices) if m.ended is None)
    with store.tx() as c:
        c.execute("INSERT INTO samples (at, waiting, running, machines, spend_rate)"
                  " VALUES (?, ?, ?, ?, ?) ON CONFLICT (at) DO UPDATE SET"
                  " waiting = excluded.waiting, running = excluded.running,"
                  " machines = excluded.machines, spend_rate = excluded.spend_rate",
                  (now, jobs.get("waiting", 0), jobs.get("running", 0) + jobs.get("matched", 0),
                   machines, rate))
        c.execute("DELETE FROM samples WHERE at < ?", (now - keep,))
    return True


def samples(store: Store, since: float) -> list[Sample]:
    with store.read() as c:
        return [Sample(*r) for r in c.execute(
            "SELECT at, waiting, running, machines, spend_rate FROM samples WHERE at >= ?"
            " ORDER BY at", (since,))]


@dataclass(frozen=True)
class Overview:
    jobs: dict[str, int]  # by state (the owner's, or everyone's)
    machines: dict[str, dict[str, int]]  # endpoint -> state -> count
    spend_rate: dict[str, float]  # endpoint -> USD per hour now
    spent_today: dict[str, float]  # endpoint -> USD since `day_start`
    spent_total: dict[str, float]  # endpoint -> USD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def overview(store: Store, prices: Mapping[str, float], owner: str | None, now: float,
             day_start: float) -> Overview:
    from controller.domain import costs

    machines: dict[str, dict[str, int]] = {}
    for endpoint, state, n in machines_by_endpoint_state(store):
        machines.setdefault(endpoint, {})[state] = n
    lives = machine_lives(store, prices)
    return Overview(store.jobs.counts(owner), machines, costs.spend_rate(lives),
                    costs.spent(lives, now, since=day_start), costs.spent(lives, now))
