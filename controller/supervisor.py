"""`cloudpilot serve --workers N`: N controller processes on one listening socket.

The parent binds the socket, then forks the workers; each builds its own app (its own
connection pool, LISTEN connection and bid for the reconcile loop's lock) and serves requests
from the shared socket, which the kernel hands to whichever worker accepts first. The parent
does no request work: it restarts a worker that dies (at most once a second), and on SIGTERM or
SIGINT stops them all (each stops gracefully, within 2 s) and returns.

Several workers need a database they can share (PostgreSQL; settings refuse SQLite)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from controller.config.settings import Settings

log = logging.getLogger("cloudpilot.supervisor")


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Forks `workers` processes, each running `serve_one(sock)`, and keeps them running."""

    def __init__(self, sock: socket.socket, workers: int,
                 serve_one: Callable[[socket.socket], None]) -> None:
        self.sock = sock
        self.workers = workers
        self.serve_one = serve_one
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self.restarts = 0

    def _spawn(self, n: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                self.serve_one(self.sock)
            except BaseException:
                log.exception("worker %d failed", n)
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = n

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for n in range(self.workers):
            self._spawn(n)
        last_restart = 0.0
        deadline: float | None = None
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if self.stopping:
                    deadline = deadline or time.monotonic() + 10
                    if time.monotonic() > deadline:  # a worker that will not stop
                        for child in list(self.children):
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(child, signal.SIGKILL)
                time.sleep(0.05)
                continue
            if pid not in self.children or self.stopping:
                self.children.pop(pid, None)
                continue
            n = self.children.pop(pid)
            log.warning("worker %d (pid %d) ended (%s); starting another", n, pid,
                        _how(status))
            wait = 1.0 - (time.monotonic() - last_restart)
            if wait > 0:
                time.sleep(wait)  # a worker that dies at once is not restarted in a busy loop
            last_restart = time.monotonic()
            self.restarts += 1
            self._spawn(n)
        self.sock.close()
        return 0


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def serve_workers(settings: Settings, serve_one: Callable[[socket.socket], None]) -> int:
    sock = listen(settings.host, settings.port)
    return Supervisor(sock, settings.workers, serve_one).run()
