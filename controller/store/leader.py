"""Which controller process runs the reconcile loop. With SQLite there is one process and it
always does. With PostgreSQL, the one holding a session advisory lock does: the lock lives as
long as the connection that took it, so when that process dies (or loses the server) the lock is
free, and the next process to ask takes it, within one loop interval.

Before each tick the leader checks that its connection still holds the lock; a leader that
finds it lost stops deciding at once. The lock is also a lease (issue 26): the connection is
idle between checks, and the server ends a session idle longer than `lease`
(idle_session_timeout), so a leader frozen (SIGSTOP) or stuck that long loses the lock and the
next process takes the lead; its late results are then refused by their epoch (the plans'
fencing token, controller/store/plans.py). Each tick also runs under the lock's *epoch*: a
counter the new leader raises when it takes over, written in the `leader` table, so a log line
or an operator can tell which leader made which decision."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import psycopg

log = logging.getLogger("cloudpilot.leader")

LOOP_LOCK = 0x636C6F7570  # the advisory lock key of the reconcile loop


class Leadership:
    """One process: always the leader (SQLite)."""

    epoch = 0

    def held(self) -> bool:
        return True

    def leads_now(self) -> bool:
        """Whether this process still leads at this instant (never takes the lead): the
        precondition of each change a driver makes for the loop."""
        return True

    def close(self) -> None:
        pass


class PostgresLeadership(Leadership):
    def __init__(self, url: str, lease: float = 30.0) -> None:
        self.url = url
        self.lease = lease
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.epoch = 0
        self.since: float | None = None

    def held(self) -> bool:
        """Is this process the leader now? Takes the lead if it is free."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
                    self._conn.execute(f"SET idle_session_timeout = {int(self.lease * 1000)}")
                    self.since = None
                if self.since is not None:  # ours: is the connection (and so the lock) alive?
                    if self._holds(self._conn):
                        return True
                    log.warning("lost the reconcile loop's lock; another process leads now")
                    self.since = None
                    return False
                got = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                         (LOOP_LOCK,)).fetchone()
                if not (got and got[0]):
                    return False
                self.epoch = self._take_over()
                self.since = time.time()
                log.warning("this process (%s) runs the reconcile loop now (epoch %d)",
                            self.me, self.epoch)
                return True
            except psycopg.Error as e:
                if self.since is not None:
                    log.warning("lost the database, and with it the reconcile loop's lock: %s",
                                str(e).strip().splitlines()[0] if str(e).strip() else e)
                self.since = None
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                return False

    @staticmethod
    def _holds(conn: psycopg.Connection[Any]) -> bool:
        return conn.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND objid = %s",
            (LOOP_LOCK & 0xFFFFFFFF,)).fetchone() is not None

    def leads_now(self) -> bool:
        """Whether this process still holds the loop's lock at this instant, asked of the
        server on the lock's own session (never takes the lead): False once the session
        ended (a lease run out while frozen, the server restarted) or the lead was lost."""
        with self._lock:
            if self.since is None or self._conn is None or self._conn.closed:
                return False
            try:
                return self._holds(self._conn)
            except psycopg.Error:
                return False  # held() notices too, and reconnects

    def _take_over(self) -> int:
        assert self._conn is not None
        with self._conn.transaction():
            row = self._conn.execute(
                "INSERT INTO leader (id, holder, epoch, since) VALUES (1, %s, 1, %s)"
                " ON CONFLICT (id) DO UPDATE SET holder = excluded.holder,"
                " epoch = leader.epoch + 1, since = excluded.since RETURNING epoch",
                (self.me, time.time())).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # the lock goes with the session
                self._conn = None
            self.since = None
