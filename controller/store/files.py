"""The SQL of job files (output sandboxes, per attempt), input sandboxes and live output. The
bytes themselves are in the file store (controller/blobs.py); these rows say what is there,
whose it is and how much of it has arrived."""

from __future__ import annotations

from typing import Any

from controller.domain.files import Declared
from controller.domain.jobs import HELD_STATES, JobState
from controller.errors import Conflict, NotFound
from controller.store.sql import Connection, Transactions

LIVE_KEEP = 256 * 1024  # characters of live output kept per job (the newest)


class FileStore:
    def __init__(self, store: Transactions) -> None:
        self.store = store

    # the pilot's side ----------------------------------------------------------------------
    def held(self, c: Connection, pilot_id: str, job_id: int,
             attempt: int) -> dict[str, Any]:
        """The job's row if this pilot holds it in this attempt (a killed one too: it uploads
        what its payload left), else NotFound or Conflict."""
        row = c.execute("SELECT id, owner, state, pilot_id, attempt, outputs FROM jobs"
                        " WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        if row["pilot_id"] != pilot_id or row["attempt"] != attempt or (
                JobState(row["state"]) not in HELD_STATES and row["state"] != "killed"):
            raise Conflict(f"attempt {attempt} of job {job_id} is not this pilot's (the job is"
                           f" {row['state']}, on attempt {row['attempt']})")
        return dict(row)

    def used(self, c: Connection, owner: str) -> int:
        """Bytes an owner holds: its job files (declared: counted from the start) and the
        input sandboxes it sent (each whole, as if it were alone)."""
        files = c.execute("SELECT COALESCE(SUM(size), 0) FROM job_files WHERE owner = ?",
                          (owner,)).fetchone()[0]
        boxes = c.execute("SELECT COALESCE(SUM(s.size), 0) FROM sandbox_owners o JOIN"
                          " sandboxes s ON s.sha256 = o.sha256 WHERE o.owner = ?",
                          (owner,)).fetchone()[0]
        return int(files) + int(boxes)

    def declare(self, c: Connection, job_id: int, attempt: int, owner: str,
                files: list[Declared], now: float) -> dict[str, dict[str, Any]]:
        """Record the files an attempt will upload (inside the caller's transaction); a file
        declared again with the same size and checksum keeps what arrived of it (a resumed
        upload). Answers each file's row."""
        out = {}
        for f in files:
            row = c.execute("SELECT * FROM job_files WHERE job_id = ? AND attempt = ? AND"
                            " name = ?", (job_id, attempt, f.name)).fetchone()
            if row is not None and (row["size"], row["sha256"]) != (f.size, f.sha256):
                if row["complete"]:
                    raise Conflict(f"{f.name} of attempt {attempt} is stored already, with "
                                   "other content")
                c.execute("DELETE FROM job_files WHERE job_id = ? AND attempt = ? AND"
                          " name = ?", (job_id, attempt, f.name))
                row = None
            if row is None:
                row = c.execute(
                    "INSERT INTO job_files (job_id, attempt, name, owner, size, sha256,"
                    " received, complete, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?)"
                    " RETURNING *", (job_id, attempt, f.name, owner, f.size, f.sha256, now)
                ).fetchone()
            out[f.name] = dict(row)
        return out

    def held_file(self, pilot_id: str, job_id: int, attempt: int,
                  name: str) -> dict[str, Any]:
        """A declared file of an attempt this pilot holds (one read)."""
        with self.store.read() as c:
            self.held(c, pilot_id, job_id, attempt)
            row = c.execute("SELECT * FROM job_files WHERE job_id = ? AND attempt = ? AND"
                            " name = ?", (job_id, attempt, name)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} attempt {attempt} declared no file {name!r}")
        return dict(row)

    def file(self, job_id: int, attempt: int, name: str) -> dict[str, Any]:
        with self.store.read() as c:
            row = c.execute("SELECT * FROM job_files WHERE job_id = ? AND attempt = ? AND"
                            " name = ?", (job_id, attempt, name)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} attempt {attempt} declared no file {name!r}")
        return dict(row)

    def set_upload(self, job_id: int, attempt: int, name: str, upload: str) -> None:
        with self.store.tx() as c:
            c.execute("UPDATE job_files SET upload = ? WHERE job_id = ? AND attempt = ? AND"
                      " name = ? AND upload IS NULL", (upload, job_id, attempt, name))

    def received(self, job_id: int, attempt: int, name: str, upto: int) -> None:
        """The file's bytes up to `upto` are stored (a chunk arrived)."""
        with self.store.tx() as c:
            c.execute("UPDATE job_files SET received = ? WHERE job_id = ? AND attempt = ? AND"
                      " name = ? AND received < ?", (upto, job_id, attempt, name, upto))

    def completed(self, job_id: int, attempt: int, name: str, now: float) -> None:
        with self.store.tx() as c:
            c.execute("UPDATE job_files SET complete = 1, received = size, stored_at = ?,"
                      " upload = NULL WHERE job_id = ? AND attempt = ? AND name = ?",
                      (now, job_id, attempt, name))

    def note(self, c: Connection, job_id: int, state: str, why: str,
             now: float) -> None:
        """A line in the job's events that is no state change (what was not kept)."""
        c.execute("INSERT INTO job_events (job_id, at, from_state, to_state, reason)"
                  " VALUES (?, ?, ?, ?, ?)", (job_id, now, state, state, why[:2000]))

    # the user's side -----------------------------------------------------------------------
    def files(self, job_id: int) -> list[dict[str, Any]]:
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT * FROM job_files WHERE job_id = ? ORDER BY attempt, name",
                (job_id,)).fetchall()]

    def stored(self, job_id: int, name: str, attempt: int | None) -> dict[str, Any]:
        """A complete file: of the given attempt, or of the newest attempt that has it."""
        sql = "SELECT * FROM job_files WHERE job_id = ? AND name = ? AND complete = 1"
        args: tuple[Any, ...] = (job_id, name)
        if attempt is not None:
            sql, args = sql + " AND attempt = ?", (*args, attempt)
        with self.store.read() as c:
            row = c.execute(sql + " ORDER BY attempt DESC LIMIT 1", args).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no stored file {name!r}"
                           + (f" in attempt {attempt}" if attempt is not None else ""))
        return dict(row)

    def expired(self, before: float, limit: int = 200) -> list[dict[str, Any]]:
        """Job files stored (or begun) before `before`: to delete."""
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT job_id, attempt, name, upload FROM job_files WHERE created_at < ?"
                " ORDER BY created_at LIMIT ?", (before, limit)).fetchall()]

    def forget(self, job_id: int, attempt: int, name: str) -> None:
        with self.store.tx() as c:
            c.execute("DELETE FROM job_files WHERE job_id = ? AND attempt = ? AND name = ?",
                      (job_id, attempt, name))

    # input sandboxes -----------------------------------------------------------------------
    def sandbox(self, sha256: str) -> dict[str, Any] | None:
        with self.store.read() as c:
            row = c.execute("SELECT * FROM sandboxes WHERE sha256 = ?", (sha256,)).fetchone()
        return dict(row) if row is not None else None

    def new_sandbox(self, sha256: str, size: int, owner: str, now: float,
                    quota: int | None) -> tuple[dict[str, Any], int]:
        """Record a sandbox (once for all owners) and that `owner` sent it; answers its row
        and what the owner held before."""
        with self.store.tx() as c:
            used = self.used(c, owner)
            c.execute("INSERT INTO sandboxes (sha256, size, received, complete, created_at,"
                      " used_at) VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                      (sha256, size, now, now))
            row = c.execute("SELECT * FROM sandboxes WHERE sha256 = ?", (sha256,)).fetchone()
            if row["size"] != size:
                raise Conflict(f"sandbox {sha256} has {row['size']} bytes, not {size}")
            return dict(row), used

    def own_sandbox(self, sha256: str, owner: str, now: float) -> None:
        with self.store.tx() as c:
            c.execute("INSERT INTO sandbox_owners (sha256, owner, at) VALUES (?, ?, ?)"
                      " ON CONFLICT (sha256, owner) DO NOTHING", (sha256, owner, now))

    def sandbox_set(self, sha256: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.store.tx() as c:
            c.execute(f"UPDATE sandboxes SET {sets} WHERE sha256 = ?",
                      (*fields.values(), sha256))

    def touch_sandbox(self, sha256: str, now: float) -> None:
        """A job refers to it: it is kept keep_outputs_for from now."""
        with self.store.tx() as c:
            c.execute("UPDATE sandboxes SET used_at = ? WHERE sha256 = ? AND used_at < ?",
                      (now, sha256, now))

    def unused_sandboxes(self, before: float, limit: int = 200) -> list[dict[str, Any]]:
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT sha256, upload FROM sandboxes WHERE used_at < ? ORDER BY used_at"
                " LIMIT ?", (before, limit)).fetchall()]

    def forget_sandbox(self, sha256: str) -> None:
        with self.store.tx() as c:
            c.execute("DELETE FROM sandbox_owners WHERE sha256 = ?", (sha256,))
            c.execute("DELETE FROM sandboxes WHERE sha256 = ?", (sha256,))

    def owns_sandbox(self, sha256: str, owner: str) -> bool:
        with self.store.read() as c:
            return c.execute("SELECT 1 FROM sandbox_owners o JOIN sandboxes s ON"
                             " s.sha256 = o.sha256 WHERE o.sha256 = ? AND o.owner = ? AND"
                             " s.complete = 1", (sha256, owner)).fetchone() is not None

    def sandboxes_of(self, owner: str) -> list[dict[str, Any]]:
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT s.* FROM sandbox_owners o JOIN"
                " sandboxes s ON s.sha256 = o.sha256 WHERE o.owner = ? ORDER BY o.at",
                (owner,)).fetchall()]

    # live output ---------------------------------------------------------------------------
    def live_append(self, c: Connection, job_id: int, attempt: int,
                    pieces: list[tuple[str, str]], now: float) -> None:
        """Append what a running payload wrote (stream, text), keeping the newest LIVE_KEEP
        characters of the job's live output."""
        for stream, text in pieces:
            c.execute("INSERT INTO live_output (job_id, attempt, stream, at, text)"
                      " VALUES (?, ?, ?, ?, ?)", (job_id, attempt, stream, now, text))
        old = c.execute("SELECT seq, LENGTH(text) FROM live_output WHERE job_id = ?"
                        " ORDER BY seq DESC", (job_id,)).fetchall()
        total, cut = 0, None
        for seq, n in old:
            total += n
            if total > LIVE_KEEP:
                cut = seq
                break
        if cut is not None:
            c.execute("DELETE FROM live_output WHERE job_id = ? AND seq <= ?", (job_id, cut))

    def live(self, job_id: int, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with self.store.read() as c:
            return [dict(r) for r in c.execute(
                "SELECT seq, attempt, stream, at, text FROM live_output WHERE job_id = ? AND"
                " seq > ? ORDER BY seq LIMIT ?", (job_id, after, limit)).fetchall()]

