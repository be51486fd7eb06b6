"""The job queue's SQL: submit, match (claim), heartbeat, report, kill, reschedule, list."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from controller.domain.jobs import (
    FINAL_STATES,
    HELD_STATES,
    InputFile,
    Job,
    JobState,
    NewJob,
    Requirements,
    check_transition,
    task_queue_key,
)
from controller.domain.matching import SlotOffer, fits
from controller.domain.placement import Asking, Running, busy_until, choose, leave_to_fuller
from controller.domain.runtime_prediction import HeldJob, Predicted
from controller.domain.taskqueues import Owners, TaskQueue, fair_share_walk, holding
from controller.errors import Conflict, NotFound, StorageBusy
from controller.store.runtimes import RunTimeStore
from controller.store.sql import HELD, Connection, Row, Transactions, one_row
from controller.store.taskqueues import Snapshot, TaskQueues, View
from controller.store.tokens import TokenStore
from controller.store.usage import UsageStore

S = JobState
T = TypeVar("T")
SEEN_EVERY = 1.0  # by default a match with nothing to claim records its pilot alive at most
# this often (the match route passes a quarter of the endpoint's lost_after)
SEEN_KEEP = 4096  # pilots remembered for that before the stale ones are dropped
# a claim: the oldest waiting job of a task queue becomes matched, its row answered
_CLAIM = ("UPDATE jobs SET state = 'matched', updated_at = ?, pilot_id = ?, machine = ?,"
          " endpoint = ?, last_heartbeat = ?, reason = NULL, attempt = attempt + 1,"
          " lease_expires = ? WHERE id = (SELECT id FROM jobs WHERE tq_id = ?"
          " AND state = 'waiting' ORDER BY id LIMIT 1{claim}) AND state = 'waiting'"
          " RETURNING *")


def _job(row: Row) -> Job:
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
        lease_expires=row["lease_expires"], outputs=json.loads(row["outputs"] or "[]"),
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
class Claim:
    """A match's outcome: the jobs claimed, each with its job token, and what the match saw
    of the machine."""

    jobs: list[tuple[Job, str]]
    draining: bool = False  # the machine takes no new work
    busy_until: float = 0.0  # when the jobs it held before this match should end
    deferred: tuple[Requirements, ...] = ()  # work left to a fuller machine asking now


@dataclasses.dataclass(frozen=True)
class _Policy:
    """What a match weighs, passed through its transaction."""

    by: str
    shares: dict[str, float]
    group_shares: dict[str, float]
    reserve_limit: float
    fuller: Sequence[Asking] | None  # the machines asking now (None: defer to none)
    token_margin: float
    strand_limit: float | None = None


@dataclasses.dataclass(frozen=True)
class Looking:
    """What a match found before its transaction, from the live snapshot: the task queues
    that fit the machine by owner (empty: none fits what it has free now), and the queues
    claims found empty since the snapshot was read."""

    fitting: Owners
    drained: set[int]


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """A submission's Idempotency-Key, a digest of its request, and how long to keep it."""

    key: str
    request_hash: str
    keep: float


def _replayed(c: Connection, owner: str, idem: IdempotencyKey,
              now: float) -> list[int] | None:
    """The ids an earlier submission with this key created, None for a new key; a Conflict
    when the key was used for another request. Expired keys are forgotten here."""
    c.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))
    row = c.execute("SELECT request_hash, ids FROM idempotency_keys"
                    " WHERE owner = ? AND key = ?", (owner, idem.key)).fetchone()
    if row is None:
        return None
    if row["request_hash"] != idem.request_hash:
        raise Conflict(f"Idempotency-Key {idem.key!r} was used for another request; use a new "
                       "key for a new submission")
    return [int(i) for i in json.loads(row["ids"])]


_JOB_COLUMNS = ("name, owner, grp, tq_id, state, priority, executable, arguments, env, inputs,"
                " requirements, max_retries, retries, reschedules, created_at, updated_at, outputs,"
                " cores, memory_mb, max_runtime")
_INSERT_CHUNK = 1000  # rows a statement: 16,000 parameters, within SQLite's 32,766


def _insert_jobs(c: Connection, rows: Sequence[tuple[Any, ...]]) -> list[int]:
    """Insert job rows; their ids in the rows' order. Ids come from the statement (RETURNING),
    not from counting back from the last one: with several controller processes inserting at
    once one submission's ids need not be consecutive."""
    ids: list[int] = []
    one = "(" + ",".join("?" * 20) + ")"
    for at in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[at:at + _INSERT_CHUNK]
        got = c.execute(
            f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES {','.join([one] * len(chunk))}"
            " RETURNING id", [v for r in chunk for v in r]).fetchall()
        ids.extend(sorted(r[0] for r in got))  # ids rise in the order the rows are inserted
    return ids


def retried(work: Callable[[], T], tries: int = 3) -> T:
    """`work` (one transaction) again when the database says it is busy: PostgreSQL, a
    deadlock with another process claiming; the last failure is raised."""
    for _ in range(tries - 1):
        try:
            return work()
        except StorageBusy:
            continue
    return work()


class JobStore:
    def __init__(self, store: Transactions, lease: float = 60.0,
                 usage: UsageStore | None = None, tokens: TokenStore | None = None) -> None:
        self.store = store
        self.usage = usage if usage is not None else UsageStore(store)  # fair share's memory
        self.tokens = tokens if tokens is not None else TokenStore(store)  # a claim's tokens
        self.lease = lease  # how long an attempt lives without a heartbeat from its pilot
        self._seen: dict[str, float] = {}  # when match last recorded each pilot alive
        self.task_queues = TaskQueues()  # what this process knows of them; the live snapshot
        # run times predicted at the reconcile loop's last tick (in this process; none: each
        # job's max_runtime), by which the matcher places, reserves and backfills
        self.predicted = Predicted()

    # transitions -------------------------------------------------------------------------
    def _move(
        self, c: Connection, job_id: int, old: JobState, new: JobState, now: float,
        why: str | None = None, *, row: Row | None = None, **fields: Any,
    ) -> Row:
        """Move one job old -> new inside the caller's transaction, recording the event; the
        job's row after the move. Refuses moves the transition table does not allow. `row`:
        the job's row as the caller read it in this transaction (not read again)."""
        default_reason = check_transition(old, new)
        ends = old in HELD_STATES and new not in HELD_STATES  # the attempt is over
        if ends and row is None:  # fair share: what it used
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        sets = ", ".join(f"{k} = ?" for k in ["state", "updated_at", *fields])
        after = c.execute(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state = ? RETURNING *",
            (new.value, now, *fields.values(), job_id, old.value),
        ).fetchone()
        if after is None:
            raise Conflict(f"job {job_id} is no longer {old.value}")
        if ends and row is not None:
            cores = row["cores"]
            since = row["started_at"] or row["updated_at"]
            self.usage.charge(c, row["owner"], row["grp"], cores * max(now - since, 0.0), now)
        c.execute(
            "INSERT INTO job_events (job_id, at, from_state, to_state, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            (job_id, now, old.value, new.value, why or default_reason),
        )
        if new == S.WAITING:  # back in its task queue
            self.task_queues.changed()
        if new in FINAL_STATES or new in (S.STALLED, S.RESCHEDULED):
            c.execute("DELETE FROM tokens WHERE job_id = ?", (job_id,))
        if ends:
            c.execute("UPDATE attempts SET ended_at = ?, outcome = ? WHERE job_id = ?"
                      " AND ended_at IS NULL", (now, new.value, job_id))
        return after

    # submission --------------------------------------------------------------------------
    def _task_queue(self, c: Connection, job: NewJob, owner: str, group: str,
                    now: float) -> int:
        memo = (job.requirements, owner, group, job.priority)
        tq_id = self.task_queues.memo(memo)
        if tq_id is not None:
            return tq_id
        key = task_queue_key(job.requirements, owner, group) + f":{job.priority}"
        tq_id = self.task_queues.by_key(key)
        if tq_id is not None:
            return tq_id
        c.execute(  # another controller process may have made it a moment ago
            "INSERT INTO task_queues (key, owner, grp, priority, requirements, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (key, owner, group, job.priority, json.dumps(job.requirements.to_dict()), now),
        )
        row = c.execute("SELECT * FROM task_queues WHERE key = ?", (key,)).fetchone()
        return self.task_queues.remember(row, memo).id

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
                        0, 0, now, now, json.dumps(list(j.outputs)) if j.outputs else None,
                        j.requirements.cores, j.requirements.memory_mb,
                        j.requirements.max_runtime,
                    ))
                ids = _insert_jobs(c, rows)
                recv, wait = check_transition(S.RECEIVED, S.WAITING), "submitted"
                events = [(i, now, None, S.RECEIVED.value, wait) for i in ids] + [
                    (i, now, S.RECEIVED.value, S.WAITING.value, recv) for i in ids]
                for at in range(0, len(events), _INSERT_CHUNK):  # a statement per chunk
                    chunk = events[at:at + _INSERT_CHUNK]
                    c.execute("INSERT INTO job_events (job_id, at, from_state, to_state,"
                              " reason) VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
                              [v for e in chunk for v in e])
                if idempotency is not None:
                    c.execute(
                        "INSERT INTO idempotency_keys (owner, key, request_hash, first_id,"
                        " count, ids, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (owner, idempotency.key, idempotency.request_hash, ids[0], len(ids),
                         json.dumps(ids), now, now + idempotency.keep))
        except BaseException as e:
            # the transaction rolled back: forget task queues created inside it
            self.task_queues.forget()
            if isinstance(e, StorageBusy) and idempotency is not None and not again:
                return self.submit(jobs, owner, group, default_retries, now, idempotency,
                                   again=True)
            raise
        self.task_queues.changed()
        self.task_queues.trim()
        return ids

    # reading -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self.store.read() as c:
            row = one_row(c, f"no job {job_id}", "SELECT * FROM jobs WHERE id = ?", job_id)
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
        """How many jobs are in each state (an owner's, or everyone's)."""
        sql = "SELECT state, COUNT(*) FROM jobs"
        args: tuple[Any, ...] = ()
        if owner is not None:
            sql, args = sql + " WHERE owner = ?", (owner,)
        with self.store.read() as c:
            return {r[0]: r[1] for r in c.execute(sql + " GROUP BY state", args)}

    def queue_snapshot(self) -> list[TaskQueue]:
        """Task queues with their waiting counts (the scheduler's view of the queue), each
        with when its first waiting job (the lowest id: the waiting index answers the count
        and it alone) became waiting."""
        with self.store.read() as c:
            rows = {r[0]: (r[1], r[2]) for r in c.execute(
                "SELECT w.tq_id, w.n, jobs.updated_at FROM (SELECT tq_id, COUNT(*) AS n,"
                " MIN(id) AS first FROM jobs WHERE state = 'waiting' GROUP BY tq_id) w"
                " JOIN jobs ON jobs.id = w.first").fetchall()}
            known = self.task_queues.known(c, rows)
        return [dataclasses.replace(known[i], waiting=n, oldest=oldest)
                for i, (n, oldest) in rows.items() if i in known]

    def busy_by_machine(self) -> dict[str, int]:
        with self.store.read() as c:
            return dict(c.execute(
                f"SELECT machine, COUNT(*) FROM jobs WHERE state IN {HELD}"
                " GROUP BY machine").fetchall())

    def busy_resources_by_machine(self) -> dict[str, tuple[int, int]]:
        """Cores and memory (MB) the held jobs of each machine take."""
        with self.store.read() as c:
            return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in c.execute(
                "SELECT machine, SUM(cores), SUM(memory_mb) FROM jobs"
                f" WHERE state IN {HELD} GROUP BY machine")}

    def held_jobs(self) -> list[HeldJob]:
        """The jobs pilots hold, for their machines' predicted ends (a matched job not yet
        started counts from its match)."""
        with self.store.read() as c:
            return [HeldJob(r[0], int(r[1]), r[2], float(r[3]), float(r[4] or 3600))
                    for r in c.execute(
                        "SELECT machine, tq_id, owner, COALESCE(started_at, updated_at),"
                        " max_runtime FROM jobs"
                        f" WHERE state IN {HELD} AND machine IS NOT NULL")]

    # matching ----------------------------------------------------------------------------
    def _fitting(self, offer: SlotOffer, whole: SlotOffer | None
                 ) -> tuple[View, Snapshot, bool]:
        """The live task queues whose requirements fit the machine (`whole`: what it has in
        all, for reservations; else the offer), and whether one of them fits the offer now.
        From the live snapshot (controller/store/taskqueues.py), worked out once per machine shape:
        a long-poll that wakes or re-checks with nothing for it costs no statement and no write
        lock; the claim then walks only these queues."""
        with self.store.read() as c:
            snap = self.task_queues.live(c)
        view = snap.view(offer, whole)
        return view, snap, snap.waiting(view, offer)

    def _note_seen(self, pilot_id: str, now: float, every: float) -> bool:
        """Whether a match with nothing to claim should record the pilot alive (at most every
        `every` seconds). Bounded: entries older than that are dropped as it grows."""
        if now - self._seen.get(pilot_id, 0.0) < every:
            return False
        if len(self._seen) >= SEEN_KEEP:
            self._seen = {p: t for p, t in self._seen.items() if now - t < every}
        self._seen[pilot_id] = now
        return True

    def looking(self, pilot_id: str, machine: str, offer: SlotOffer,
                whole: SlotOffer | None = None, now: float | None = None,
                seen_every: float = SEEN_EVERY) -> Looking | None:
        """A match's first step, with no transaction: what fits the machine, from the live
        snapshot; None when it has nothing to claim, is not draining and was recorded alive
        less than `seen_every` seconds ago (nothing to write: an idle long-poll's look)."""
        now = time.time() if now is None else now
        view, snap, waiting = self._fitting(offer, whole)
        noted = self._note_seen(pilot_id, now, seen_every)
        if not (noted or waiting or machine in snap.draining):
            return None
        return Looking(view.owners if waiting else {}, snap.drained)

    def claim(
        self, looking: Looking, pilot_id: str, machine: str, offer: SlotOffer, *, by: str,
        shares: dict[str, float], token_margin: float = 0.0,
        group_shares: dict[str, float] | None = None, count: int = 1,
        whole: SlotOffer | None = None, reserve_limit: float = 0.0,
        fuller: Sequence[Asking] | None = None, now: float | None = None,
        strand_limit: float | None = None,
    ) -> Claim:
        """A match's transaction (the caller's, when it holds one: the API answers the jobs
        inside it, so a job that cannot be answered is never claimed). Claims up to `count`
        waiting jobs that fit the offer, each time the best one: fair share across owners (or
        groups, then owners) first, then priority, then age, as domain/placement.choose picks
        (`whole`: what the machine has in all, for a reservation held for a wide job;
        `fuller`: the machines asking at this moment, work one of them should have before this
        one (domain/placement.leave_to_fuller) is left to it; None: this request cannot wait,
        it takes the best job it may take now). The offer shrinks by what each claimed job
        takes. A draining machine gets nothing. Each job gets a job token living its
        max_runtime plus `token_margin`. Records that the pilot and its machine are alive.
        `shares` are the owners' shares, `group_shares` the groups'. Times are predicted
        (`self.predicted`); `strand_limit` as in placement.choose."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            return self._claim(c, pilot_id, machine, offer, count, whole, looking.fitting,
                               looking.drained, now, _Policy(
                                   by, shares, group_shares or {}, reserve_limit, fuller,
                                   token_margin, strand_limit))

    def match(
        self, pilot_id: str, machine: str, offer: SlotOffer, *, by: str,
        shares: dict[str, float], token_margin: float = 0.0,
        group_shares: dict[str, float] | None = None, count: int = 1,
        whole: SlotOffer | None = None, reserve_limit: float = 0.0,
        fuller: Sequence[Asking] | None = None, now: float | None = None,
        seen_every: float = SEEN_EVERY, strand_limit: float | None = None,
    ) -> Claim:
        """`looking`, then `claim` in a transaction of its own (retried when PostgreSQL
        reports a deadlock with another process claiming)."""
        now = time.time() if now is None else now
        look = self.looking(pilot_id, machine, offer, whole, now, seen_every)
        if look is None:
            return Claim([])
        return retried(lambda: self.claim(
            look, pilot_id, machine, offer, by=by, shares=shares, token_margin=token_margin,
            group_shares=group_shares, count=count, whole=whole,
            reserve_limit=reserve_limit, fuller=fuller, now=now, strand_limit=strand_limit))

    def _claim(self, c: Connection, pilot_id: str, machine: str, offer: SlotOffer,
               count: int, whole: SlotOffer | None, fitting: Owners, drained: set[int],
               now: float, policy: _Policy) -> Claim:
        """The match's transaction: the pilot and machine seen, what the machine holds (and
        whether it drains) in one read, the claims, then their events, attempts and tokens
        written at once."""
        reg = c.execute("UPDATE pilots SET last_seen = ? WHERE id = ?"
                        " RETURNING cores, memory_mb, slots", (now, pilot_id)).fetchone()
        rows = c.execute(
            "SELECT m.draining, j.pilot_id, j.cores, j.memory_mb,"
            " COALESCE(j.started_at, j.updated_at), j.max_runtime, j.tq_id FROM machines m"
            f" LEFT JOIN jobs j ON j.machine = m.name AND j.state IN {HELD}"
            " WHERE m.name = ?", (machine,)).fetchall()
        draining = bool(rows and rows[0][0])
        held = [r for r in rows if r[1] is not None]
        running = [Running(int(r[2] or 1), int(r[3] or 0),
                           self.predicted.ends(r[6], float(r[4]), float(r[5] or 0), now))
                   for r in held]
        busy = busy_until(running)
        got: list[Job] = []
        deferred: list[Requirements] = []
        if reg is not None and not draining and fitting:
            # at most what the pilot registered, minus what it holds, whatever it says now
            mine = [r for r in held if r[1] == pilot_id]
            offer = dataclasses.replace(
                offer, cores=min(offer.cores, reg[0] - sum(int(r[2] or 0) for r in mine)),
                memory_mb=min(offer.memory_mb, reg[1] - sum(int(r[3] or 0) for r in mine)))
            count = min(count, (reg[2] or 1) - len(mine))
        if count > 0 and reg is not None and not draining and fitting:
            got = self._pick(c, pilot_id, machine, offer, count, whole, fitting, drained,
                             running, busy, now, policy, deferred)
        tokens: list[str] = []
        if got:
            self._record_claims(c, got, pilot_id, machine, now)
            tokens = self.tokens.issue_for_jobs(c, got, policy.token_margin)
        c.execute("UPDATE machines SET last_seen = ?" + (", last_busy_at = ?" if got else "")
                  + " WHERE name = ?", (now, now, machine) if got else (now, machine))
        return Claim(list(zip(got, tokens, strict=True)), draining, busy, tuple(deferred))

    def _pick(self, c: Connection, pilot_id: str, machine: str, offer: SlotOffer,
              count: int, whole: SlotOffer | None, owners: Owners, drained: set[int],
              running: list[Running], busy: float, now: float, policy: _Policy,
              deferred: list[Requirements]) -> list[Job]:
        """Claim the jobs, one statement each: fair share read once and carried forward in
        memory as each claim adds to what its owner holds. A queue left to a fuller machine
        asking now is noted in `deferred`."""
        me = Asking(machine, offer, busy)
        skip: set[int] = set()  # queues found empty, or left to a fuller machine
        fs = self.usage.fair_share(c, policy.by, policy.shares, policy.group_shares, now)
        claim = _CLAIM.format(claim=self.store.dialect.claim)
        got: list[Job] = []

        def waits(q: TaskQueue) -> bool:  # before holding cores for it
            row = c.execute("SELECT 1 FROM jobs WHERE tq_id = ? AND state = 'waiting'"
                            " LIMIT 1", (q.id,)).fetchone()
            if row is None:
                skip.add(q.id)
            return row is not None

        while len(got) < count:
            room = whole or offer
            candidates = (self.predicted.queue(q) for q in fair_share_walk(owners, fs)
                          if q.id not in skip and q.id not in drained
                          and fits(q.requirements, room))
            q = choose(candidates, offer, whole, running, now, policy.reserve_limit,
                       waits=waits, strand_limit=policy.strand_limit)
            if q is None:
                break
            if policy.fuller is not None and leave_to_fuller(q.requirements, me, policy.fuller):
                skip.add(q.id)
                deferred.append(q.requirements)
                continue
            row = c.execute(claim, (now, pilot_id, machine, offer.endpoint, now,
                                    now + self.lease, q.id)).fetchone()
            if row is None:
                drained.add(q.id)  # for this snapshot's walks, and the live one's
                self.task_queues.drained(q)
                continue
            job = _job(row)
            got.append(job)
            r = job.requirements
            fs = holding(fs, job.owner, job.group, r.cores)
            offer = dataclasses.replace(offer, cores=offer.cores - r.cores,
                                        memory_mb=offer.memory_mb - r.memory_mb)
            running.append(Running(r.cores, r.memory_mb, now + q.runtime))
        return got

    @staticmethod
    def _record_claims(c: Connection, jobs: Sequence[Job], pilot_id: str,
                       machine: str, now: float) -> None:
        """The claimed jobs' events and attempts, one statement each for all of them."""
        check_transition(S.WAITING, S.MATCHED)
        c.execute(
            "INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES "
            + ",".join(["(?, ?, ?, ?, ?)"] * len(jobs)),
            [v for j in jobs for v in (
                j.id, now, S.WAITING.value, S.MATCHED.value,
                f"attempt {j.attempt}: matched to pilot {pilot_id} on {machine}")])
        c.execute(
            "INSERT INTO attempts (job_id, n, pilot_id, machine, endpoint, started_at,"
            " lease_expires) VALUES " + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(jobs)),
            [v for j in jobs for v in (j.id, j.attempt, pilot_id, machine, j.endpoint, now,
                                       j.lease_expires)])

    # pilot reports -----------------------------------------------------------------------
    def _held(self, c: Connection, pilot_id: str, job_id: int,
              attempt: int | None = None) -> Row:
        """The job's row if this pilot holds it (in the given attempt), else a Conflict."""
        row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        if attempt is not None and attempt != row["attempt"]:
            raise Conflict(f"attempt {attempt} of job {job_id} is over (the job is on attempt "
                           f"{row['attempt']}): stop it")
        if row["pilot_id"] != pilot_id or (
            row["state"] not in HELD_STATES and row["state"] != S.KILLED
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
        lease = now + self.lease  # renewed by every heartbeat
        if not progress:
            return Renewal(stop, lost, self.lease)
        ids = list(progress)
        told = [i for i in ids if i in attempts]  # the attempts the pilot says it runs
        same = (" AND attempt = CASE id " + " ".join(["WHEN ? THEN ?"] * len(told))
                + " ELSE attempt END") if told else ""
        with self.store.tx() as c:
            # the running attempts still the pilot's own, renewed in one statement
            renewed = {r[0] for r in c.execute(
                "UPDATE jobs SET last_heartbeat = ?, lease_expires = ?, progress = CASE id "
                + " ".join(["WHEN ? THEN ?"] * len(ids))
                + f" END WHERE id IN ({','.join('?' * len(ids))}) AND pilot_id = ?"
                " AND state = 'running'" + same + " RETURNING id",
                [now, lease, *[v for i in ids for v in (i, progress[i])], *ids, pilot_id,
                 *[v for i in told for v in (i, attempts[i])]]).fetchall()}
            rest = [i for i in ids if i not in renewed]
            rows = {r["id"]: r for r in c.execute(
                "SELECT id, state, pilot_id, attempt FROM jobs WHERE id IN"
                f" ({','.join('?' * len(rest))})", rest).fetchall()} if rest else {}
            for job_id in rest:  # just started, or no longer its own
                row = rows.get(job_id)
                state = row["state"] if row is not None else None
                own = row is not None and row["pilot_id"] == pilot_id \
                    and attempts.get(job_id, row["attempt"]) == row["attempt"]
                if own and state == S.MATCHED:
                    self._move(c, job_id, S.MATCHED, S.RUNNING, now, started_at=now,
                               last_heartbeat=now, progress=progress[job_id],
                               lease_expires=lease)
                    continue
                stop.append(job_id)
                if not own or state != S.KILLED:
                    lost.append(job_id)
        return Renewal(stop, lost, self.lease)

    def report(self, pilot_id: str, job_id: int, status: str, exit_code: int | None,
               reason: str | None, now: float | None = None,
               attempt: int | None = None) -> Job:
        """The pilot's final word on a job (in `attempt`): done, failed or interrupted."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            row = self._held(c, pilot_id, job_id, attempt)
            # rows locked in one order, as a heartbeat does: the machine, then the job, then
            # the run-time history and (at commit) the usage (bench.chaos: reports that locked
            # the job first deadlocked with their pilot's heartbeats, and with each other, on
            # PostgreSQL)
            c.execute("UPDATE machines SET last_busy_at = ? WHERE name = ?",
                      (now, row["machine"]))
            state = JobState(row["state"])
            if state == S.KILLED:  # killed meanwhile: keep it killed, keep the exit code
                after = c.execute("UPDATE jobs SET exit_code = ? WHERE id = ? RETURNING *",
                                  (exit_code, job_id)).fetchone()
            elif status == "interrupted":
                self._move(c, job_id, state, S.RESCHEDULED, now, reason or "pilot interrupted",
                           row=row, reschedules=row["reschedules"] + 1)
                after = self._move(c, job_id, S.RESCHEDULED, S.WAITING, now, pilot_id=None,
                                   machine=None, endpoint=None, progress=None,
                                   lease_expires=None)
            else:
                new = S.DONE if status == "done" else S.FAILED
                after = self._move(c, job_id, state, new, now, reason, row=row,
                                   exit_code=exit_code, ended_at=now, reason=reason)
            if after["state"] == S.DONE.value and row["started_at"] is not None:
                RunTimeStore.record(c, row["tq_id"], row["owner"],  # run-time history
                                    max(now - row["started_at"], 0.0), now)
        self.requeued(after["state"] == S.WAITING)
        return _job(after)

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
            row = one_row(c, f"no job {job_id}", "SELECT state FROM jobs WHERE id = ?", job_id)
            state = JobState(row["state"])
            if state in FINAL_STATES:
                raise Conflict(f"job {job_id} is already {state.value}")
            return _job(self._move(c, job_id, state, S.KILLED, now, f"killed by {by}",
                                   ended_at=now, reason=f"killed by {by}"))

    def interrupt(self, machine: str | None, why: str, now: float | None = None) -> list[int]:
        """Jobs held on a machine the site took away (its batch job cancelled, or out of wall
        time) before its pilot could report them, or (machine None) every held job (a
        database restored from a backup): rescheduled as interrupted, using no retry."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            rows = c.execute(f"SELECT * FROM jobs WHERE state IN {HELD}"
                             + (" AND machine = ?" if machine is not None else ""),
                             (machine,) if machine is not None else ()).fetchall()
            for r in rows:
                self._move(c, r["id"], JobState(r["state"]), S.RESCHEDULED, now, why,
                           reschedules=r["reschedules"] + 1)
                self._move(c, r["id"], S.RESCHEDULED, S.WAITING, now, pilot_id=None,
                           machine=None, endpoint=None, progress=None)
        self.requeued(bool(rows))
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
            # PostgreSQL: a job another process is moving (a pilot's report) is left for the
            # next look, and one that moved since is no longer picked (before: its Conflict
            # undid the whole stall, bench.chaos)
            rows = c.execute(f"SELECT * FROM jobs WHERE {' AND '.join(where)}"
                             f"{self.store.dialect.claim}", args).fetchall()
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
        self.requeued(any(state == S.WAITING for _, state in out))
        return out

    def requeued(self, any_back: bool) -> None:
        """Jobs came back to their task queues: the live snapshot is read again (its
        invalidation inside the transaction, in `_move`, may be overtaken by a snapshot read
        that began before the commit; once committed, no read misses them)."""
        if any_back:
            self.task_queues.changed()
