"""Schema migrations, applied in order and recorded in the `_migrations` table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from controller.domain.plans import OPEN_STATES
from controller.store.schema_pg import BASELINE, held_change
from controller.store.sql import HELD, in_list


def m001_initial(db: Database) -> None:
    db.table("users").create(
        {"name": str, "grp": str, "share": float, "created_at": float}, pk="name"
    )
    db.table("tokens").create(
        {
            "id": int, "hash": str, "role": str, "owner": str, "grp": str, "endpoint": str,
            "job_id": int, "created_at": float, "expires_at": float, "note": str,
        },
        pk="id",
        not_null={"hash", "role", "created_at"},
    )
    db.table("tokens").create_index(["hash"], unique=True)
    db.table("tokens").create_index(["job_id"])
    db.table("task_queues").create(
        {
            "id": int, "key": str, "owner": str, "grp": str, "priority": int,
            "requirements": str, "created_at": float,
        },
        pk="id",
    )
    db.table("task_queues").create_index(["key"], unique=True)
    db.table("jobs").create(
        {
            "id": int, "name": str, "owner": str, "grp": str, "tq_id": int, "state": str,
            "priority": int, "executable": str, "arguments": str, "env": str, "inputs": str,
            "requirements": str, "max_retries": int, "retries": int, "reschedules": int,
            "created_at": float, "updated_at": float, "started_at": float, "ended_at": float,
            "pilot_id": str, "machine": str, "endpoint": str, "exit_code": int,
            "reason": str, "progress": str, "last_heartbeat": float,
        },
        pk="id",
        not_null={"owner", "state", "tq_id", "executable", "created_at", "updated_at"},
    )
    # The matcher's hot path: the oldest waiting job of a task queue.
    db.execute(
        "CREATE INDEX idx_jobs_waiting ON jobs(tq_id, id) WHERE state = 'waiting'"
    )
    db.execute(
        f"CREATE INDEX idx_jobs_active ON jobs(machine, state) WHERE state IN {HELD}"
    )
    db.table("jobs").create_index(["state"])
    db.table("jobs").create_index(["owner", "state"])
    db.table("job_events").create(
        {"id": int, "job_id": int, "at": float, "from_state": str, "to_state": str,
         "reason": str},
        pk="id",
    )
    db.table("job_events").create_index(["job_id"])
    db.table("outputs").create(
        {"job_id": int, "stdout": str, "stderr": str, "truncated": int, "uploaded_at": float},
        pk="job_id",
    )
    db.table("endpoints").create(
        {"name": str, "driver": str, "config": str, "last_seq": int, "state": str,
         "message": str, "updated_at": float},
        pk="name",
    )
    db.table("machines").create(
        {
            "name": str, "endpoint": str, "state": str, "created_at": float,
            "updated_at": float, "last_busy_at": float, "last_seen": float, "address": str,
            "reason": str, "info": str, "managed": int,
        },
        pk="name",
    )
    db.table("machines").create_index(["endpoint", "state"])
    db.table("machine_events").create(
        {"id": int, "machine": str, "at": float, "from_state": str, "to_state": str,
         "reason": str},
        pk="id",
    )
    db.table("machine_events").create_index(["machine"])
    db.table("pilots").create(
        {
            "id": str, "endpoint": str, "machine": str, "cores": int, "memory_mb": int,
            "tags": str, "slots": int, "version": str, "registered_at": float,
            "last_seen": float,
        },
        pk="id",
    )
    db.table("pilots").create_index(["machine"])


def m002_held_counts(db: Database) -> None:
    """Slots each owner and group holds now, kept by triggers on every job state change, so
    the matcher's fair share reads a few rows instead of counting held jobs each time."""
    db.execute("CREATE TABLE held (kind TEXT NOT NULL, name TEXT NOT NULL,"
               " n INTEGER NOT NULL, PRIMARY KEY (kind, name))")
    for kind, col in (("owner", "owner"), ("group", "grp")):
        db.execute(f"""
            CREATE TRIGGER held_{kind} AFTER UPDATE OF state ON jobs
            WHEN (OLD.state IN {HELD}) != (NEW.state IN {HELD})
            BEGIN
                INSERT INTO held (kind, name, n)
                VALUES ('{kind}', NEW.{col}, CASE WHEN NEW.state IN {HELD} THEN 1 ELSE -1 END)
                ON CONFLICT (kind, name) DO UPDATE SET n = n + excluded.n;
            END""")
    db.execute(f"""
        INSERT INTO held (kind, name, n)
        SELECT 'owner', owner, COUNT(*) FROM jobs WHERE state IN {HELD} GROUP BY owner
        UNION ALL
        SELECT 'group', grp, COUNT(*) FROM jobs WHERE state IN {HELD} GROUP BY grp""")


def m003_plans(db: Database) -> None:
    """Plans (a driver's change to an endpoint, kept for review and approval), their state
    history, the endpoints' events, and the marks that steer an endpoint's plans (down, up,
    back-off)."""
    db.table("plans").create(
        {
            "id": int, "endpoint": str, "state": str, "creates": str, "deletes": str,
            "wanted": str, "reasons": str, "detail": str, "asked_by": str, "approved_by": str,
            "message": str, "cost_per_hour": float, "specs": str, "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"endpoint", "state", "creates", "deletes", "wanted", "reasons", "asked_by",
                  "created_at", "updated_at"},
    )
    db.execute("CREATE INDEX idx_plans_open ON plans(endpoint, state)"
               " WHERE state IN ('pending', 'approved')")
    db.table("plans").create_index(["endpoint", "id"])
    db.table("plan_events").create(
        {"id": int, "plan_id": int, "at": float, "from_state": str, "to_state": str,
         "reason": str},
        pk="id",
    )
    db.table("plan_events").create_index(["plan_id"])
    # what happened to an endpoint: driver failures with their message, recoveries, down, up
    db.table("endpoint_events").create(
        {"id": int, "endpoint": str, "at": float, "state": str, "message": str}, pk="id")
    db.table("endpoint_events").create_index(["endpoint", "id"])
    # what the driver reports of a machine besides its address (a cloud instance's id...)
    db.table("machines").add_column("observed", str)
    # marks on an endpoint that steer its plans
    db.table("endpoints").add_column("down_by", str)  # who took it down; NULL: it is up
    db.table("endpoints").add_column("up_by", str)  # who asked to apply its next plan now
    db.table("endpoints").add_column("failures", int, not_null_default=0)  # in a row
    db.table("endpoints").add_column("retry_at", float)  # back-off: leave the driver until then


def m004_ssh_hosts(db: Database) -> None:
    """Hosts of SSH endpoints (listed in the config, or joined at run time) and what happened
    to each: joined, facts, host key trusted on first use, unreachable, left."""
    db.table("ssh_hosts").create(
        {
            "endpoint": str, "name": str, "machine": str, "address": str, "port": int,
            "slots": int, "cores": int, "memory_mb": int, "source": str, "membership": str,
            "joined_at": float, "updated_at": float, "facts": str, "failures": int,
            "last_failure_at": float, "last_error": str, "host_key": str,
        },
        pk=("endpoint", "name"),
        not_null={"address", "port", "membership", "joined_at", "updated_at"},
    )
    db.table("ssh_hosts").create_index(["machine"], unique=True)
    db.table("ssh_host_events").create(
        {"id": int, "endpoint": str, "host": str, "at": float, "event": str, "detail": str},
        pk="id",
    )
    db.table("ssh_host_events").create_index(["endpoint", "host"])


def m005_ticks(db: Database) -> None:
    """Each scheduler tick per endpoint: its inputs and decision (zlib-compressed JSON), kept
    up to a retention limit, for `cloudpilot explain` and `cloudpilot replay`."""
    db.table("ticks").create(
        {"id": int, "endpoint": str, "at": float, "starts": int, "removes": int,
         "inputs": bytes, "decision": bytes},
        pk="id", not_null={"endpoint", "at", "inputs", "decision"},
    )
    db.table("ticks").create_index(["endpoint", "id"])


def m006_i10_plans_applying(db: Database) -> None:
    """Plans have an `applying` state (the endpoint's worker is making the change): the index
    of open plans covers it."""
    db.execute("DROP INDEX IF EXISTS idx_plans_open")
    db.execute(f"CREATE INDEX idx_plans_open ON plans(endpoint, state)"
               f" WHERE state IN {in_list(OPEN_STATES)}")


def m007_i9_pilot_credentials(db: Database) -> None:
    """Pilot credentials of their own. A pilot token with no pilot_id is a one-time bootstrap
    token (what a machine gets at boot, optionally bound to one machine name); registering
    exchanges it for a credential bound to the new pilot (pilot_id), and deletes it."""
    db.table("tokens").add_column("pilot_id", str)
    db.table("tokens").add_column("machine", str)
    db.table("tokens").create_index(["pilot_id"])


def i12_web_sessions(db: Database) -> None:
    """Dashboard sessions: a random session id (only its hash kept) bound to the token that
    logged in (revoking the token ends its sessions), with its CSRF secret."""
    db.table("web_sessions").create(
        {"hash": str, "token_id": int, "csrf": str, "created_at": float, "expires_at": float},
        pk="hash", not_null={"token_id", "csrf", "created_at", "expires_at"})
    db.table("web_sessions").create_index(["token_id"])


def i12_samples(db: Database) -> None:
    """A sample of the fleet every `sample_interval` seconds, for the overview's charts."""
    db.table("samples").create(
        {"at": float, "waiting": int, "running": int, "machines": int, "spend_rate": float},
        pk="at")


def i12_jobs_keyset(db: Database) -> None:
    """The dashboard's job list sorted by last change pages by (updated_at, id): keyset
    pagination, each page one index range whatever its depth (by id it needs no index)."""
    db.execute("CREATE INDEX idx_jobs_updated ON jobs(updated_at, id)")


def i11_idempotency(db: Database) -> None:
    """Idempotency keys of submissions: a retried submission with the same key (and the same
    body) answers the jobs the first one created. Written in the submission's transaction;
    kept until `expires_at`."""
    db.execute("CREATE TABLE idempotency_keys (owner TEXT NOT NULL, key TEXT NOT NULL,"
               " request_hash TEXT NOT NULL, first_id INTEGER NOT NULL, count INTEGER NOT NULL,"
               " created_at REAL NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (owner, key))")
    db.execute("CREATE INDEX idx_idempotency_expiry ON idempotency_keys(expires_at)")


def i11_attempts(db: Database) -> None:
    """Numbered attempts: each match starts one, held under a lease that the pilot's heartbeats
    renew. `jobs.attempt` is the current (or last) attempt's number, `jobs.lease_expires` its
    lease; `attempts` keeps every attempt and how it ended."""
    db.execute("ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN lease_expires REAL")
    db.execute("UPDATE jobs SET attempt = 1 WHERE pilot_id IS NOT NULL")
    db.execute("UPDATE jobs SET lease_expires = COALESCE(last_heartbeat, updated_at) + 60"
               f" WHERE state IN {HELD}")
    db.execute("CREATE TABLE attempts (job_id INTEGER NOT NULL, n INTEGER NOT NULL,"
               " pilot_id TEXT NOT NULL, machine TEXT, endpoint TEXT,"
               " started_at REAL NOT NULL, lease_expires REAL NOT NULL, ended_at REAL,"
               " outcome TEXT, PRIMARY KEY (job_id, n))")


def _held_triggers(db: Database, cores: str) -> None:
    """Fair share's held counts per owner and group (jobs and `cores`, an expression over
    NEW), kept by triggers on a job's state."""
    for kind, col in (("owner", "owner"), ("group", "grp")):
        db.execute(f"DROP TRIGGER held_{kind}")
        db.execute(f"""
            CREATE TRIGGER held_{kind} AFTER UPDATE OF state ON jobs
            WHEN (OLD.state IN {HELD}) != (NEW.state IN {HELD})
            BEGIN
                INSERT INTO held (kind, name, n, cores)
                VALUES ('{kind}', NEW.{col}, CASE WHEN NEW.state IN {HELD} THEN 1 ELSE -1 END,
                        CASE WHEN NEW.state IN {HELD} THEN {cores} ELSE -{cores} END)
                ON CONFLICT (kind, name) DO UPDATE
                SET n = n + excluded.n, cores = cores + excluded.cores;
            END""")


def i13_usage(db: Database) -> None:
    """Fair share with memory: used core-seconds per owner and per group, decayed with a
    half-life (the value as of `at`), and the cores each holds now beside its slots."""
    db.execute("CREATE TABLE usage (kind TEXT NOT NULL, name TEXT NOT NULL,"
               " core_seconds REAL NOT NULL, at REAL NOT NULL, PRIMARY KEY (kind, name))")
    db.execute("ALTER TABLE held ADD COLUMN cores INTEGER NOT NULL DEFAULT 0")
    _held_triggers(db, "CAST(COALESCE(json_extract(NEW.requirements, '$.cores'), 1)"
                       " AS INTEGER)")
    for kind, col in (("owner", "owner"), ("group", "grp")):
        db.execute(f"""
            UPDATE held SET cores = (
                SELECT COALESCE(SUM(json_extract(requirements, '$.cores')), 0) FROM jobs
                WHERE state IN {HELD} AND jobs.{col} = held.name)
            WHERE kind = '{kind}'""")


def i13_drain(db: Database) -> None:
    """Consolidation: a machine the scheduler drains takes no new jobs."""
    db.table("machines").add_column("draining", int, not_null_default=0)


def i15_idempotency_ids(db: Database) -> None:
    """The ids a keyed submission created, as a JSON list: with several controller processes
    inserting at once (PostgreSQL) one submission's ids need not be consecutive."""
    db.execute(I15_IDS)


I15_IDS = "ALTER TABLE idempotency_keys ADD COLUMN ids TEXT"


def i21_idempotency_ids_filled(db: Database) -> None:
    """Keys kept from before migration 015 get their ids listed too (there were consecutive:
    first_id and count), so that a replay reads `ids` alone."""
    rows = db.execute("SELECT rowid, first_id, count FROM idempotency_keys"
                      " WHERE ids IS NULL").fetchall()
    for rowid, first, n in rows:
        db.execute("UPDATE idempotency_keys SET ids = ? WHERE rowid = ?",
                   (json.dumps(list(range(first, first + n))), rowid))


I21_IDS_FILLED = ("UPDATE idempotency_keys SET ids = (SELECT json_agg(i)::text FROM"
                  " generate_series(first_id, first_id + count - 1) i) WHERE ids IS NULL")


def i15_leader(db: Database) -> None:
    """Who leads the reconcile loop, and the how-manyth leader it is (controller/store/
    leader.py; with SQLite one process always leads and the row stays empty)."""
    db.execute(I15_LEADER)


I15_LEADER = ("CREATE TABLE leader (id INTEGER PRIMARY KEY, holder TEXT NOT NULL,"
              " epoch BIGINT NOT NULL, since DOUBLE PRECISION NOT NULL)")


def i20_engine_plan(db: Database) -> None:
    """A plan keeps Pulumi's own update plan (`preview --save-plan`), applied with
    `up --plan`; an endpoint keeps the drift its last drift check found."""
    for sql in I20_ENGINE_PLAN:
        db.execute(sql)


I20_ENGINE_PLAN = ["ALTER TABLE plans ADD COLUMN engine_plan TEXT",
                   "ALTER TABLE endpoints ADD COLUMN drift TEXT"]


I22_FILES = [
    "ALTER TABLE jobs ADD COLUMN outputs TEXT",
    # a job's output files, per attempt (controller/store/files.py)
    "CREATE TABLE job_files (job_id BIGINT NOT NULL, attempt BIGINT NOT NULL, name TEXT NOT NULL,"
    " owner TEXT NOT NULL, size BIGINT NOT NULL, sha256 TEXT NOT NULL,"
    " received BIGINT NOT NULL DEFAULT 0, upload TEXT, complete BIGINT NOT NULL DEFAULT 0,"
    " created_at DOUBLE PRECISION NOT NULL, stored_at DOUBLE PRECISION,"
    " PRIMARY KEY (job_id, attempt, name))",
    "CREATE INDEX idx_job_files_owner ON job_files (owner)",
    "CREATE INDEX idx_job_files_created ON job_files (created_at)",
    # input sandboxes: stored once by content (SHA-256), readable by the owners who sent them
    "CREATE TABLE sandboxes (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL,"
    " received BIGINT NOT NULL DEFAULT 0, upload TEXT, complete BIGINT NOT NULL DEFAULT 0,"
    " created_at DOUBLE PRECISION NOT NULL, used_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE sandbox_owners (sha256 TEXT NOT NULL, owner TEXT NOT NULL,"
    " at DOUBLE PRECISION NOT NULL, PRIMARY KEY (sha256, owner))",
    "CREATE INDEX idx_sandbox_owners_owner ON sandbox_owners (owner)",
]
# a running job's output as it comes (pieces with a rising sequence number)
I22_LIVE = "(job_id BIGINT NOT NULL, attempt BIGINT NOT NULL, stream TEXT NOT NULL," \
    " at DOUBLE PRECISION NOT NULL, text TEXT NOT NULL)"
I22_LIVE_INDEX = "CREATE INDEX idx_live_output_job ON live_output (job_id, seq)"


def i22_files(db: Database) -> None:
    """Issue 22: jobs' output patterns, their output files, input sandboxes, live output."""
    for sql in I22_FILES:
        db.execute(sql)
    db.execute("CREATE TABLE live_output (seq INTEGER PRIMARY KEY, " + I22_LIVE[1:])
    db.execute(I22_LIVE_INDEX)


# issue 24: offers a cloud refused (capacity, quota), blocked until `blocked_until`; one row per
# endpoint and pool (machine type / zone / market), removed when a launch there succeeds
I24_REFUSALS = ("CREATE TABLE offer_refusals (endpoint TEXT NOT NULL, pool TEXT NOT NULL,"
                " kind TEXT NOT NULL, message TEXT NOT NULL, failures BIGINT NOT NULL,"
                " since DOUBLE PRECISION NOT NULL, blocked_until DOUBLE PRECISION NOT NULL,"
                " PRIMARY KEY (endpoint, pool))")


def i24_refusals(db: Database) -> None:
    """Issue 24: the per-offer memory of refusals (controller/store/refusals.py)."""
    db.execute(I24_REFUSALS)


# issue 26: the epoch of the leader that applies a plan (its fencing token)
I26_PLAN_EPOCH = "ALTER TABLE plans ADD COLUMN epoch BIGINT"


def i26_plan_epoch(db: Database) -> None:
    """Issue 26: a plan keeps the epoch of the leader applying it; results are recorded only
    under that epoch."""
    db.execute(I26_PLAN_EPOCH)


# Issue 23: the last two real run times per task queue and per owner (the predictions of
# controller/domain/runtime_prediction.py), written as a job ends (controller/store/runtimes.py)
I23_RUN_TIMES = ("CREATE TABLE run_times (kind TEXT NOT NULL, name TEXT NOT NULL,"
                 " last DOUBLE PRECISION NOT NULL, prev DOUBLE PRECISION,"
                 " at DOUBLE PRECISION NOT NULL, PRIMARY KEY (kind, name))")


def i23_run_times(db: Database) -> None:
    """Run-time history: the last two real run times of each task queue and each owner."""
    db.execute(I23_RUN_TIMES)


# Issue 19: a job's shape in real columns (the matcher, the triggers and the scheduler read
# them on every claim and state change; before, out of the requirements' JSON), filled from
# the JSON with the defaults of domain/jobs.Requirements
I19_SHAPE = [
    "ALTER TABLE jobs ADD COLUMN cores INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE jobs ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 512",
    "ALTER TABLE jobs ADD COLUMN max_runtime INTEGER NOT NULL DEFAULT 3600",
]


def _i19_fill(cores: str, memory: str, runtime: str) -> str:
    return (f"UPDATE jobs SET cores = COALESCE({cores}, 1), memory_mb = COALESCE({memory}, 512),"
            f" max_runtime = COALESCE({runtime}, 3600)")


I19_FILL_PG = _i19_fill(*(f"(requirements::jsonb ->> '{k}')::NUMERIC::BIGINT"
                          for k in ("cores", "memory_mb", "max_runtime")))
I19_HELD_CHANGE_PG = held_change("NEW.cores")


def i19_job_shape(db: Database) -> None:
    """A job's cores, memory and max run time in columns of their own; the fair-share
    triggers read them."""
    for sql in I19_SHAPE:
        db.execute(sql)
    db.execute(_i19_fill(*(f"CAST(json_extract(requirements, '$.{k}') AS INTEGER)"
                           for k in ("cores", "memory_mb", "max_runtime"))))
    _held_triggers(db, "NEW.cores")


@dataclass(frozen=True)
class Migration:
    """One step of the schema: how SQLite takes it, and how PostgreSQL does (SQL statements;
    None: PostgreSQL's baseline in schema_pg.py already has it)."""

    name: str
    sqlite: Callable[[Database], None]
    postgres: list[str] | None = None


MIGRATIONS: list[Migration] = [
    Migration("001_initial", m001_initial, BASELINE),
    Migration("002_held_counts", m002_held_counts),
    Migration("003_plans", m003_plans),
    Migration("004_ssh_hosts", m004_ssh_hosts),
    Migration("005_ticks", m005_ticks),
    Migration("006_i10_plans_applying", m006_i10_plans_applying),
    Migration("007_i9_pilot_credentials", m007_i9_pilot_credentials),
    Migration("008_i12_web_sessions", i12_web_sessions),
    Migration("009_i12_samples", i12_samples),
    Migration("010_i12_jobs_keyset", i12_jobs_keyset),
    Migration("011_i11_idempotency", i11_idempotency),
    Migration("012_i11_attempts", i11_attempts),
    Migration("013_i13_usage", i13_usage),
    Migration("014_i13_drain", i13_drain),
    # from here on, one statement for both where the SQL allows
    Migration("015_i15_idempotency_ids", i15_idempotency_ids, [I15_IDS]),
    Migration("016_i15_leader", i15_leader, [I15_LEADER]),
    Migration("017_i20_engine_plan", i20_engine_plan, I20_ENGINE_PLAN),
    Migration("018_i22_files", i22_files, [
        *I22_FILES, "CREATE TABLE live_output (seq BIGINT GENERATED BY DEFAULT AS IDENTITY"
        " PRIMARY KEY, " + I22_LIVE[1:], I22_LIVE_INDEX]),
    Migration("019_i24_refusals", i24_refusals, [I24_REFUSALS]),
    Migration("020_i21_idempotency_ids_filled", i21_idempotency_ids_filled, [I21_IDS_FILLED]),
    Migration("021_i26_plan_epoch", i26_plan_epoch, [I26_PLAN_EPOCH]),
    Migration("022_i23_run_times", i23_run_times, [I23_RUN_TIMES]),
    Migration("023_i19_job_shape", i19_job_shape, [*I19_SHAPE, I19_FILL_PG,
                                                    I19_HELD_CHANGE_PG]),
]


def migrate(db: Database) -> list[str]:
    """Apply the migrations not yet recorded (SQLite); return the names applied."""
    if "_migrations" not in db.table_names():
        db.table("_migrations").create({"name": str, "applied_at": float}, pk="name")
    done = {r["name"] for r in db.table("_migrations").rows}
    applied = []
    for m in MIGRATIONS:
        if m.name in done:
            continue
        with db.atomic():
            m.sqlite(db)
            db.table("_migrations").insert({"name": m.name, "applied_at": time.time()})
        applied.append(m.name)
    return applied


MIGRATE_LOCK = 0x636C6F7564  # the advisory lock processes starting at once migrate under


def migrate_postgres(conn: Any) -> list[str]:
    """Apply the migrations not yet recorded (PostgreSQL), in one transaction, under an
    advisory lock: of several processes starting at once, one migrates, the others wait and
    find it done. `conn` is a psycopg connection in autocommit mode."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY,"
                     " applied_at DOUBLE PRECISION)")
        done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
        for m in MIGRATIONS:
            if m.name in done:
                continue
            for sql in m.postgres or []:
                conn.execute(sql)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)",
                         (m.name, time.time()))
            applied.append(m.name)
    return applied
