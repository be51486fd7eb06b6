"""Each endpoint's own worker thread: where its slow calls run (a driver's apply, a Pulumi
preview and up, an Ansible run), one at a time, never in the loop's tick.

A thread cannot be killed: when work runs past its timeout the loop records the failure
(`EndpointKind.timed_out`) and the endpoint stays busy until the call returns (a driver is
never asked to do two things at once); whatever it returns late is logged, not applied."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("cloudpilot.loop")


class Worker:
    def __init__(self, name: str, timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.timeout = timeout
        self.clock = clock
        self.what = ""  # what runs now ("applying plan 4")
        self.started_at: float | None = None
        self.overdue_reported = False
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()
        self.then: Callable[[], None] | None = None  # run once the work in progress is done

    @property
    def busy(self) -> bool:
        return not self._done.is_set()

    def overdue(self, now: float) -> bool:
        return self.busy and self.started_at is not None and now - self.started_at > self.timeout

    def start(self, what: str, work: Callable[[], None]) -> None:
        """Run `work` in this endpoint's thread. `work` handles its own outcome; anything it
        raises is a bug, logged with its traceback."""
        if self.busy:
            raise RuntimeError(f"endpoint {self.name}: {self.what} is still under way")
        self.what, self.started_at, self.overdue_reported = what, self.clock(), False
        self._done.clear()

        def run() -> None:
            try:
                work()
            except Exception:
                log.exception("endpoint %s: %s failed", self.name, what)
            finally:
                self.what, self.started_at = "", None
                then, self.then = self.then, None
                self._done.set()
                if then is not None:  # asked for by `work`, once it is no longer busy
                    then()

        self._thread = threading.Thread(target=run, name=f"endpoint-{self.name}", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the work in progress (if any) is done; False if it is still running."""
        return self._done.wait(timeout)
