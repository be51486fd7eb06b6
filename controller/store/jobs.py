"""The job queue's SQL: submit, match (claim), heartbeat, report, kill, reschedule, list."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from controller.domain.jobs import (
    ACTIVE_STATES,
    FINAL_STATES,
    InputFile,
    Job,
    JobState,
    NewJob,
    Requirements,
    check_transition,
    task_queue_key,
)
from controller.domain.matching import SlotOffer, fits
from controller.domain.placement import Running, busy_until, choose
from controller.domain.taskqueues import TaskQueue, fair_share_order
from controller.errors import Conflict, NotFound, StorageBusy
from controller.store.machines import MachineStore
from controller.store.sql import Transactions, in_list
from controller.store.usage import UsageStore

S = JobState
HELD = in_list(ACTIVE_STATES)  # jobs a pilot holds; the text of idx_jobs_active's WHERE
SEEN_EVERY = 1.0  # a match records its pilot alive at most this often when nothing is claimed


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], name=row["name"] or "", owner=row["owner"], group=row["grp"],
        state=JobState(row["state"]), task_queue=row["tq_id"], priority=row["priority"],
        executable=row["executable"], arguments=json.loads(row["arguments"]),
        env=json.loads(row["env"]), inputs=json.loads(row["inputs"]),
        requirements=Requirements.from_dict(json.loads(row["requirements"])),
        max_retries=row["max_retries"], retries=row["retries"],
        reschedules=row["reschedules"], created_at=row["created_at"],
        updated_at=row["updated_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        pilot_id=row["pilot_id"], machine=row["machine"], endpoint=row["endpoint"],
        exit_code=row["exit_code"], reason=row["reason"], progress=row["progress"],
        last_heartbeat=row["last_heartbeat"], attempt=row["attempt"],
        lease_expires=row["lease_expires"],
    )


def _input(f: InputFile) -> dict[str, str]:
    return {k: v for k, v in dataclasses.asdict(f).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Renewal:
    """A heartbeat's answer about the jobs it named."""

    stop: list[int]  # stop these: killed, or no longer the pilot's
    lost: list[int]  # of those, the attempts no longer the pilot's: kill them at once
    lease: float  # the others' leases now run this long from the heartbeat


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """A submission's Idempotency-Key, a digest of its request, and how long to keep it."""

    key: str
    request_hash: str
    keep: float


def _replayed(c: sqlite3.Connection, owner: str, idem: IdempotencyKey,
              now: float) -> list[int] | None:
    """The ids an earlier submission with this key created, None for a new key; a Conflict
    when the key was used for another request. Expired keys are forgotten here."""
    c.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))
    row = c.execute("SELECT request_hash, first_id, count, ids FROM idempotency_keys"
                    " WHERE owner = ? AND key = ?", (owner, idem.key)).fetchone()
    if row is None:
        return None
    if row["request_hash"] != idem.request_hash:
        raise Conflict(f"Idempotency-Key {idem.key!r} was used for another request; use a new "
                       "key for a new submission")
    if row["ids"] is not None:
        return [int(i) for i in json.loads(row["ids"])]
    return list(range(row["first_id"], row["first_id"] + row["count"]))  # before migration 015


def _within_registered(c: sqlite3.Connection, pilot_id: str, machine: str, offer: SlotOffer,
                       count: int) -> tuple[SlotOffer, int]:
    """The offer and count a pilot may be matched for: at most its registered cores, memory
    and slots minus what it holds now, whatever its request claims."""
    reg = c.execute("SELECT cores, memory_mb, slots FROM pilots WHERE id = ?",
                    (pilot_id,)).fetchone()
    if reg is None:
        return offer, 0
    n, cores, mem = c.execute(
        "SELECT COUNT(*), COALESCE(SUM(json_extract(requirements, '$.cores')), 0),"
        " COALESCE(SUM(json_extract(requirements, '$.memory_mb')), 0) FROM jobs"
        f" WHERE machine = ? AND state IN {HELD} AND pilot_id = ?",
        (machine, pilot_id)).fetchone()
    bounded = dataclasses.replace(offer, cores=min(offer.cores, reg["cores"] - int(cores)),
                                  memory_mb=min(offer.memory_mb, reg["memory_mb"] - int(mem)))
    return bounded, min(count, (reg["slots"] or 1) - n)


_JOB_COLUMNS = ("name, owner, grp, tq_id, state, priority, executable, arguments, env, inputs,"
                " requirements, max_retries, retries, reschedules, created_at, updated_at")
_INSERT_CHUNK = 1000  # rows a statement: 16,000 parameters, within SQLite's 32,766


def _insert_jobs(c: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> list[int]:
    """Insert job rows; their ids in the rows' order. Ids come from the statement (RETURNING),
    not from counting back from the last one: with several controller processes inserting at
    once one submission's ids need not be consecutive."""
    ids: list[int] = []
    one = "(" + ",".join("?" * 16) + ")"
    for at in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[at:at + _INSERT_CHUNK]
        got = c.execute(
            f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES {','.join([one] * len(chunk))}"
            " RETURNING id", [v for r in chunk for v in r]).fetchall()
        ids.extend(sorted(r[0] for r in got))  # ids rise in the order the rows are inserted
    return ids


class JobStore:
    def __init__(self, store: Transactions, lease: float = 60.0,
                 usage: UsageStore | None = None) -> None:
        self.store = store
        self.usage = usage if usage is not None else UsageStore(store)  # fair share's memory
        self.lease = lease  # how long an attempt lives without a heartbeat from its pilot
        self._seen: dict[str, float] = {}  # when match last recorded each pilot alive
        self._tqs: dict[int, TaskQueue] = {}
        self._tq_keys: dict[str, int] = {}
        self._tq_memo: dict[tuple[Requirements, str, str, int], int] = {}
        self.reload_task_queues()

    def _remember_tq(self, r: sqlite3.Row) -> TaskQueue:
        tq = TaskQueue(r["id"], Requirements.from_dict(json.loads(r["requirements"])),
                       r["owner"], r["grp"], r["priority"])
        self._tqs[tq.id] = tq
        self._tq_keys[r["key"]] = tq.id
        return tq

    # transitions -------------------------------------------------------------------------
    def _move(
        self, c: sqlite3.Connection, job_id: int, old: JobState, new: JobState, now: float,
        why: str | None = None, **fields: Any,
    ) -> None:
        """Move one job old -> new inside the caller's transaction, recording the event.
        Refuses moves the transition table does not allow."""
        default_reason = check_transition(old, new)
        held = None
        if old in ACTIVE_STATES and new not in ACTIVE_STATES:  # fair share: what it used
            held = c.execute(
                "SELECT owner, grp, json_extract(requirements, '$.cores'),"
                " COALESCE(started_at, updated_at) FROM jobs WHERE id = ?",
                (job_id,)).fetchone()
        sets = ", ".join(f"{k} = ?" for k in ["state", "updated_at", *fields])
        cur = c.execute(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state = ?",
            (new.value, now, *fields.values(), job_id, old.value),
        )
        if cur.rowcount != 1:
            raise Conflict(f"job {job_id} is no longer {old.value}")
        if held is not None:
            owner, group, cores, since = held
            self.usage.charge(c, owner, group, (cores or 1) * max(now - since, 0.0), now)
        c.execute(
            "INSERT INTO job_events (job_id, at, from_state, to_state, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            (job_id, now, old.value, new.value, why or default_reason),
        )
        if new in FINAL_STATES or new in (S.STALLED, S.RESCHEDULED):
            c.execute("DELETE FROM tokens WHERE job_id = ?", (job_id,))
        if old in ACTIVE_STATES and new not in ACTIVE_STATES:  # the attempt is over
            c.execute("UPDATE attempts SET ended_at = ?, outcome = ? WHERE job_id = ?"
                      " AND ended_at IS NULL", (now, new.value, job_id))

    # submission --------------------------------------------------------------------------
    def _task_queue(self, c: sqlite3.Connection, job: NewJob, owner: str, group: str,
                    now: float) -> int:
        memo = (job.requirements, owner, group, job.priority)
        tq_id = self._tq_memo.get(memo)
        if tq_id is not None:
            return tq_id
        key = task_queue_key(job.requirements, owner, group) + f":{job.priority}"
        tq_id = self._tq_keys.get(key)
        if tq_id is None:
            c.execute(  # another controller process may have made it a moment ago
                "INSERT INTO task_queues (key, owner, grp, priority, requirements, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (key, owner, group, job.priority, json.dumps(job.requirements.to_dict()), now),
            )
            row = c.execute("SELECT * FROM task_queues WHERE key = ?", (key,)).fetchone()
            tq_id = self._remember_tq(row).id
        self._tq_memo[memo] = tq_id
        return tq_id

    def submit(self, jobs: Sequence[NewJob], owner: str, group: str, default_retries: int,
               now: float | None = None, idempotency: IdempotencyKey | None = None,
               *, again: bool = False) -> list[int]:
        """Insert jobs (received -> waiting, both recorded) in one transaction. With an
        idempotency key, a key seen before answers the ids it created then (the same request)
        or is a Conflict (another request); a new key is stored in the same transaction (the
        same key sent to two controller processes at once: one stores it, the other's
        transaction fails on it and is run again, answering the first one's ids)."""
        now = time.time() if now is None else now
        if not jobs:
            return []
        try:
            with self.store.tx() as c:
                if idempotency is not None:
                    seen = _replayed(c, owner, idempotency, now)
                    if seen is not None:
                        return seen
                rows = []
                for j in jobs:
                    tq = self._task_queue(c, j, owner, group, now)
                    rows.append((
                        j.name, owner, group, tq, S.WAITING.value, j.priority, j.executable,
                        json.dumps(list(j.arguments)), json.dumps(dict(j.env)),
                        json.dumps([_input(f) for f in j.inputs]),
                        json.dumps(j.requirements.to_dict()),
                        default_retries if j.max_retries is None else j.max_retries,
                        0, 0, now, now,
                    ))
                ids = _insert_jobs(c, rows)
                recv, wait = check_transition(S.RECEIVED, S.WAITING), "submitted"
                c.executemany(
                    "INSERT INTO job_events (job_id, at, from_state, to_state, reason)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(i, now, None, S.RECEIVED.value, wait) for i in ids]
                    + [(i, now, S.RECEIVED.value, S.WAITING.value, recv) for i in ids],
                )
                if idempotency is not None:
                    c.execute(
                        "INSERT INTO idempotency_keys (owner, key, request_hash, first_id,"
                        " count, ids, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (owner, idempotency.key, idempotency.request_hash, ids[0], len(ids),
                         json.dumps(ids), now, now + idempotency.keep))
        except BaseException as e:
            # the transaction rolled back: forget task queues created inside it
            self.reload_task_queues()
            if isinstance(e, StorageBusy) and idempotency is not None and not again:
                return self.submit(jobs, owner, group, default_retries, now, idempotency,
                                   again=True)
            raise
        return ids

    def _learn_task_queues(self, c: sqlite3.Connection) -> None:
        """Learn the task queues other controller processes made (a shared PostgreSQL store;
        with SQLite this process made them all). Ids are not committed in order across
        processes, so the count tells, not the highest id."""
        if self.store.dialect.shared and c.execute(
                "SELECT COUNT(*) FROM task_queues").fetchone()[0] != len(self._tqs):
            for r in c.execute("SELECT * FROM task_queues").fetchall():
                if r["id"] not in self._tqs:
                    self._remember_tq(r)

    def reload_task_queues(self) -> None:
        """Load the task queues from the database (at start, and after a rolled-back submit)."""
        self._tqs.clear()
        self._tq_keys.clear()
        self._tq_memo.clear()
        with self.store.read() as c:
            for r in c.execute("SELECT * FROM task_queues"):
                self._remember_tq(r)

    # reading -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self.store.read() as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job(row)

    def find(self, *, state: str | None = None, owner: str | None = None,
             endpoint: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        where, args = [], []
        for col, val in (("state", state), ("owner", owner), ("endpoint", endpoint)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id LIMIT ? OFFSET ?"
        with self.store.read() as c:
            return [_job(r) for r in c.execute(sql, (*args, limit, offset))]

    def events(self, job_id: int) -> list[dict[str, Any]]:
        self.get(job_id)
        with self.store.read() as c:
            rows = c.execute(
                "SELECT at, from_state, to_state, reason FROM job_events WHERE job_id = ?"
                " ORDER BY id", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def output(self, job_id: int) -> dict[str, Any] | None:
        with self.store.read() as c:
            row = c.execute("SELECT * FROM outputs WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def counts(self, owner: str | None = None) -> dict[str, int]:
        sql = "SELECT state, COUNT(*) FROM jobs"
        args: tuple[Any, ...] = ()
        if owner is not None:
            sql, args = sql + " WHERE owner = ?", (owner,)
        with self.store.read() as c:
            return {r[0]: r[1] for r in c.execute(sql + " GROUP BY state", args)}

    def queue_snapshot(self) -> list[TaskQueue]:
        """Task queues with their waiting counts (the scheduler's view of the queue)."""
        with self.store.read() as c:
            self._learn_task_queues(c)
            counts = dict(c.execute(
                "SELECT tq_id, COUNT(*) FROM jobs WHERE state = 'waiting' GROUP BY tq_id"
            ).fetchall())
            if not counts.keys() <= self._tqs.keys():  # another process made one meanwhile
                self._learn_task_queues(c)
        return [dataclasses.replace(self._tqs[i], waiting=n) for i, n in counts.items()
                if i in self._tqs]

    def busy_by_machine(self) -> dict[str, int]:
        with self.store.read() as c:
            return dict(c.execute(
                f"SELECT machine, COUNT(*) FROM jobs WHERE state IN {HELD}"
                " GROUP BY machine").fetchall())

    def busy_resources_by_machine(self) -> dict[str, tuple[int, int]]:
        """Cores and memory (MB) the held jobs of each machine take."""
        with self.store.read() as c:
            return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in c.execute(
                "SELECT machine, SUM(json_extract(requirements, '$.cores')),"
                " SUM(json_extract(requirements, '$.memory_mb')) FROM jobs"
                f" WHERE state IN {HELD} GROUP BY machine")}

    # matching ----------------------------------------------------------------------------
    def _may_fit(self, offer: SlotOffer) -> bool:
        """Is any job waiting in a task queue that fits the offer? (A read, no write lock: a
        long-poll that wakes or re-checks with nothing for it stays cheap.)"""
        with self.store.read() as c:
            self._learn_task_queues(c)
            fitting = [q.id for q in list(self._tqs.values()) if fits(q.requirements, offer)]
            if not fitting:
                return False
            return c.execute(
                f"SELECT 1 FROM jobs WHERE state = 'waiting' AND tq_id IN"
                f" ({','.join('?' * len(fitting))}) LIMIT 1", fitting).fetchone() is not None

    def busy_until(self, machine: str) -> float:
        """The latest time the jobs a machine holds should end (0: none)."""
        with self.store.read() as c:
            return busy_until(self.running(c, machine))

    def match(
        self, pilot_id: str, machine: str, offer: SlotOffer, *, by: str,
        shares: dict[str, float], issue_token: Callable[[sqlite3.Connection, Job], str],
        group_shares: dict[str, float] | None = None, count: int = 1,
        whole: SlotOffer | None = None, reserve_limit: float = 0.0,
        defer: Callable[[Requirements], bool] | None = None, now: float | None = None,
    ) -> list[tuple[Job, str]]:
        """Claim up to `count` waiting jobs that fit the offer, in one transaction, each time
        the best one: fair share across owners (or groups, then owners) first, then priority,
        then age, as domain/placement.choose picks (`whole`: what the machine has in all, for
        a reservation held for a wide job; `defer`: work left to a fuller machine asking now).
        The offer shrinks by what each claimed job takes. A draining machine gets nothing.
        Also records that the pilot is alive. `shares` are the owners' shares,
        `group_shares` the groups'."""
        now = time.time() if now is None else now
        got: list[tuple[Job, str]] = []
        if not self._may_fit(offer) and now - self._seen.get(pilot_id, 0.0) < SEEN_EVERY:
            return []  # nothing to claim, liveness recorded lately: no write transaction
        self._seen[pilot_id] = now
        asked = offer, count
        for tries in range(3):  # PostgreSQL: a deadlock with another process claiming
            got, (offer, count) = [], asked
            try:
                with self.store.tx() as c:
                    c.execute("UPDATE pilots SET last_seen = ? WHERE id = ?", (now, pilot_id))
                    c.execute("UPDATE machines SET last_seen = ? WHERE name = ?", (now, machine))
                    if MachineStore.draining(c, machine):
                        return got
                    offer, count = _within_registered(c, pilot_id, machine, offer, count)
                    skip: set[int] = set()  # queues found empty, or left to a fuller machine
                    running = self.running(c, machine) if whole is not None else []

                    def waits(q: TaskQueue) -> bool:  # before holding cores for it
                        row = c.execute("SELECT 1 FROM jobs WHERE tq_id = ? AND state = 'waiting'"
                                        " LIMIT 1", (q.id,)).fetchone()
                        if row is None:
                            skip.add(q.id)  # noqa: B023 (called in this try only)
                        return row is not None

                    while len(got) < count:
                        candidates = [q for q in list(self._tqs.values())
                                      if q.id not in skip and fits(q.requirements, whole or offer)]
                        if not candidates:
                            break
                        fs = self.usage.fair_share(c, by, shares, group_shares or {}, now)
                        q = choose(fair_share_order(candidates, fs), offer, whole, running, now,
                                   reserve_limit, waits=waits)
                        if q is None:
                            break
                        if defer is not None and defer(q.requirements):
                            skip.add(q.id)
                            continue
                        row = c.execute(
                            "SELECT * FROM jobs WHERE tq_id = ? AND state = 'waiting' ORDER BY id"
                            " LIMIT 1" + self.store.dialect.claim, (q.id,)).fetchone()
                        if row is None:
                            skip.add(q.id)
                            continue
                        attempt, lease_expires = row["attempt"] + 1, now + self.lease
                        self._move(c, row["id"], S.WAITING, S.MATCHED, now,
                                   f"attempt {attempt}: matched to pilot {pilot_id} on {machine}",
                                   pilot_id=pilot_id, machine=machine, endpoint=offer.endpoint,
                                   last_heartbeat=now, reason=None, attempt=attempt,
                                   lease_expires=lease_expires)
                        c.execute("INSERT INTO attempts (job_id, n, pilot_id, machine, endpoint,"
                                  " started_at, lease_expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (row["id"], attempt, pilot_id, machine, offer.endpoint, now,
                                   lease_expires))
                        job = dataclasses.replace(
                            _job(row), state=S.MATCHED, pilot_id=pilot_id, machine=machine,
                            endpoint=offer.endpoint, last_heartbeat=now, updated_at=now,
                            reason=None, attempt=attempt, lease_expires=lease_expires)
                        got.append((job, issue_token(c, job)))
                        r = job.requirements
                        offer = dataclasses.replace(offer, cores=offer.cores - r.cores,
                                                    memory_mb=offer.memory_mb - r.memory_mb)
                        running.append(Running(r.cores, r.memory_mb, now + r.max_runtime))
                    if got:
                        c.execute("UPDATE machines SET last_busy_at = ? WHERE name = ?",
                                  (now, machine))
                return got
            except StorageBusy:
                if tries == 2:
                    raise
        return got

    @staticmethod
    def running(c: sqlite3.Connection, machine: str) -> list[Running]:
        """The jobs a machine holds, each with the latest time it should end."""
        return [Running(int(cores or 1), int(mem or 0), float(since) + float(runtime or 0))
                for cores, mem, since, runtime in c.execute(
                    "SELECT json_extract(requirements, '$.cores'),"
                    " json_extract(requirements, '$.memory_mb'),"
                    " COALESCE(started_at, updated_at), json_extract(requirements,"
                    " '$.max_runtime') FROM jobs WHERE machine = ?"
                    " AND state IN ('matched', 'running')", (machine,)).fetchall()]

    # pilot reports -----------------------------------------------------------------------
    def _held(self, c: sqlite3.Connection, pilot_id: str, job_id: int,
              attempt: int | None = None) -> sqlite3.Row:
        """The job's row if this pilot holds it (in the given attempt), else a Conflict."""
        row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        if attempt is not None and attempt != row["attempt"]:
            raise Conflict(f"attempt {attempt} of job {job_id} is over (the job is on attempt "
                           f"{row['attempt']}): stop it")
        if row["pilot_id"] != pilot_id or (
            row["state"] not in ACTIVE_STATES and row["state"] != S.KILLED
        ):
            raise Conflict(f"job {job_id} is not held by this pilot (it is {row['state']})")
        return row

    def heartbeat(self, pilot_id: str, progress: dict[int, str | None],
                  now: float | None = None,
                  attempts: dict[int, int] | None = None) -> Renewal:
        """Record a pilot's heartbeat for its running jobs, renewing their leases; say which
        it must stop: killed ones (gracefully), and those no longer its own (another pilot's,
        over, or in another attempt than it runs: at once)."""
        now = time.time() if now is None else now
        stop: list[int] = []
        lost: list[int] = []
        attempts = attempts or {}
        with self.store.tx() as c:
            for job_id, prog in progress.items():
                row = c.execute("SELECT state, pilot_id, attempt FROM jobs WHERE id = ?",
                                (job_id,)).fetchone()
                own = row is not None and row["pilot_id"] == pilot_id \
                    and attempts.get(job_id, row["attempt"]) == row["attempt"]
                if not own or row["state"] not in ACTIVE_STATES:
                    stop.append(job_id)
                    if not own or row["state"] != S.KILLED:
                        lost.append(job_id)
                    continue
                lease = now + self.lease  # renewed by every heartbeat
                if row["state"] == S.MATCHED:
                    self._move(c, job_id, S.MATCHED, S.RUNNING, now, started_at=now,
                               last_heartbeat=now, progress=prog, lease_expires=lease)
                else:
                    c.execute("UPDATE jobs SET last_heartbeat = ?, progress = ?,"
                              " lease_expires = ? WHERE id = ?", (now, prog, lease, job_id))
        return Renewal(stop, lost, self.lease)

    def report(self, pilot_id: str, job_id: int, status: str, exit_code: int | None,
               reason: str | None, now: float | None = None,
               attempt: int | None = None) -> Job:
        """The pilot's final word on a job (in `attempt`): done, failed or interrupted."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = self._held(c, pilot_id, job_id, attempt)
            state = JobState(row["state"])
            if state == S.KILLED:  # killed meanwhile: keep it killed, keep the exit code
                c.execute("UPDATE jobs SET exit_code = ? WHERE id = ?", (exit_code, job_id))
            elif status == "interrupted":
                self._move(c, job_id, state, S.RESCHEDULED, now, reason or "pilot interrupted",
                           reschedules=row["reschedules"] + 1)
                self._move(c, job_id, S.RESCHEDULED, S.WAITING, now, pilot_id=None,
                           machine=None, endpoint=None, progress=None, lease_expires=None)
            else:
                new = S.DONE if status == "done" else S.FAILED
                self._move(c, job_id, state, new, now, reason, exit_code=exit_code,
                           ended_at=now, reason=reason)
            c.execute("UPDATE machines SET last_busy_at = ? WHERE name = ?",
                      (now, row["machine"]))
            return _job(c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def save_output(self, pilot_id: str, job_id: int, stdout: str, stderr: str,
                    truncated: bool, now: float | None = None,
                    attempt: int | None = None) -> None:
        now = time.time() if now is None else now
        with self.store.tx() as c:
            self._held(c, pilot_id, job_id, attempt)
            c.execute(
                "INSERT INTO outputs (job_id, stdout, stderr, truncated, uploaded_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET"
                " stdout = excluded.stdout, stderr = excluded.stderr,"
                " truncated = excluded.truncated, uploaded_at = excluded.uploaded_at",
                (job_id, stdout, stderr, int(truncated), now))

    # kill and reschedule -----------------------------------------------------------------
    def kill(self, job_id: int, by: str, now: float | None = None) -> Job:
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}")
            state = JobState(row["state"])
            if state in FINAL_STATES:
                raise Conflict(f"job {job_id} is already {state.value}")
            self._move(c, job_id, state, S.KILLED, now, f"killed by {by}", ended_at=now,
                       reason=f"killed by {by}")
            return _job(c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def interrupt(self, machine: str, why: str, now: float | None = None) -> list[int]:
        """Jobs held on a machine the site took away (its batch job cancelled, or out of wall
        time) before its pilot could report them: rescheduled as interrupted, using no
        retry."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            rows = c.execute("SELECT * FROM jobs WHERE state IN ('matched', 'running')"
                             " AND machine = ?", (machine,)).fetchall()
            for r in rows:
                self._move(c, r["id"], JobState(r["state"]), S.RESCHEDULED, now, why,
                           reschedules=r["reschedules"] + 1)
                self._move(c, r["id"], S.RESCHEDULED, S.WAITING, now, pilot_id=None,
                           machine=None, endpoint=None, progress=None)
        return [r["id"] for r in rows]

    def stall(self, *, expired_before: float | None = None,
              machines: Iterable[str] | None = None, now: float | None = None,
              why: str = "") -> list[tuple[int, JobState]]:
        """Held jobs whose attempt's lease ran out before `expired_before`, or (and) which run
        on `machines`: stalled, then rescheduled while retries are left, else failed. Only a
        caller that knows the payload is dead (or its lease surely over) may stall a job."""
        now = time.time() if now is None else now
        if expired_before is None and machines is None:
            raise ValueError("stall what? give expired_before, machines or both")
        where: list[str] = [f"state IN {HELD}"]
        args: list[object] = []
        if expired_before is not None:
            where.append("COALESCE(lease_expires, last_heartbeat, updated_at) < ?")
            args.append(expired_before)
        if machines is not None:
            names = list(machines)
            where.append(f"machine IN ({','.join('?' * len(names))})")
            args += names
        out: list[tuple[int, JobState]] = []
        with self.store.tx() as c:
            rows = c.execute(f"SELECT * FROM jobs WHERE {' AND '.join(where)}", args).fetchall()
            for r in rows:
                silent = now - (r["last_heartbeat"] or r["updated_at"])
                reason = why or (f"attempt {r['attempt']}: lease ran out, no heartbeat for "
                                 f"{silent:.0f}s")
                self._move(c, r["id"], JobState(r["state"]), S.STALLED, now, reason)
                if r["retries"] < r["max_retries"]:
                    self._move(c, r["id"], S.STALLED, S.RESCHEDULED, now,
                               f"retry {r['retries'] + 1} of {r['max_retries']}",
                               retries=r["retries"] + 1)
                    self._move(c, r["id"], S.RESCHEDULED, S.WAITING, now, pilot_id=None,
                               machine=None, endpoint=None, progress=None, lease_expires=None)
                    out.append((r["id"], S.WAITING))
                else:
                    self._move(c, r["id"], S.STALLED, S.FAILED, now,
                               f"stalled and no retries left ({r['max_retries']})",
                               ended_at=now, reason="stalled; no retries left")
                    out.append((r["id"], S.FAILED))
        return out
