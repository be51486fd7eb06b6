"""An endpoint's own worker thread for slow calls (Ansible runs, batch commands over SSH):
one piece of work at a time, never in the reconcile loop's thread; failures are logged,
never raised into the loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("cloudpilot.worker")


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Work of this endpoint is under way."""
        return self._thread is not None and self._thread.is_alive()

    def run(self, work: Callable[[], None]) -> None:
        """Start `work` in the worker thread; refused while earlier work is under way."""
        if self.busy:
            raise RuntimeError(f"{self.name}: work is already under way")

        def guarded() -> None:
            try:
                work()
            except Exception:
                log.exception("%s: work failed", self.name)

        self._thread = threading.Thread(target=guarded, name=self.name, daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for work under way to end (at shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)
