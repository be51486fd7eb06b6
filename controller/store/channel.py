"""Messages between controller processes that share a PostgreSQL database, over LISTEN/NOTIFY:
"the queue changed, wake n long-polls" and "forget what you cached of X". With SQLite there is
one process and the channel carries nothing.

A message is `origin|kind|arg`: each process ignores its own (it acted on it already). Sending
never blocks the caller (a thread sends, coalescing wake-ups); the listening thread reconnects
when the server goes away (a restart), and then wakes every long-poll once, since what was sent
meanwhile is lost."""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger("cloudpilot.channel")

CHANNEL = "cloudpilot"
WAKE = "wake"  # arg: how many long-polls (empty: all)
FORGET = "forget"  # arg: what to forget ("users", "pilot:<id>")

Handler = Callable[[str, str], None]  # (kind, arg)


class Channel:
    """No other process: nothing to send, nothing arrives (SQLite)."""

    def start(self, handler: Handler) -> None:
        pass

    def send(self, kind: str, arg: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class PostgresChannel(Channel):
    def __init__(self, url: str, *, reconnect_every: float = 0.5) -> None:
        self.url = url
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reconnect_every = reconnect_every
        self._out: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listening = threading.Event()  # set while LISTEN is in place (tests wait for it)

    def start(self, handler: Handler) -> None:
        for target, name in ((self._listen, "pg-listen"), (self._send, "pg-notify")):
            t = threading.Thread(target=target, args=(handler,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def send(self, kind: str, arg: str = "") -> None:
        self._out.put((kind, arg))

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        for t in self._threads:
            t.join(timeout=3)

    # the two threads -----------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any] | None:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=3)
        except psycopg.Error as e:
            log.warning("channel: cannot reach the database (%s); retrying", _first_line(e))
            self._stop.wait(self.reconnect_every)
            return None

    def _listen(self, handler: Handler) -> None:
        missed = False
        while not self._stop.is_set():
            conn = self._connect()
            if conn is None:
                missed = True
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                if missed:  # messages sent while we were away are lost: wake everyone once
                    handler(WAKE, "")
                    handler(FORGET, "*")
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        origin, _, rest = note.payload.partition("|")
                        if origin != self.origin:
                            kind, _, arg = rest.partition("|")
                            handler(kind, arg)
            except psycopg.Error as e:
                if not self._stop.is_set():
                    log.warning("channel: lost the database (%s); reconnecting", _first_line(e))
                missed = True
            except Exception:
                log.exception("channel: a handler failed")
            finally:
                self.listening.clear()
                conn.close()

    def _send(self, handler: Handler) -> None:
        conn: psycopg.Connection[Any] | None = None
        while True:
            item = self._out.get()
            if item is None:
                break
            batch = {item}
            while True:  # coalesce what queued meanwhile (a burst of submissions)
                try:
                    more = self._out.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._stop.set()
                    break
                batch.add(more)
            for kind, arg in sorted(batch):
                for _ in range(2):
                    if conn is None or conn.closed:
                        conn = self._connect()
                        if conn is None:
                            continue
                    try:
                        conn.execute("SELECT pg_notify(%s, %s)",
                                     (CHANNEL, f"{self.origin}|{kind}|{arg}"))
                        break
                    except psycopg.Error:
                        conn.close()
                        conn = None
            if self._stop.is_set():
                break
        if conn is not None:
            conn.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
