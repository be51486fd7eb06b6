"""An endpoint's state, events and back-off, written the same way for every kind: by the loop
after `observe`/`decide`, and by the endpoint's worker when its work ends."""

from __future__ import annotations

import logging
import threading

from controller.domain.endpoints import Backoff, EndpointState
from controller.reconcile.endpoint import Outcome, one_line
from controller.store import Store

log = logging.getLogger("cloudpilot.loop")


class EndpointStatus:
    def __init__(self, store: Store, endpoint: str) -> None:
        self.store = store
        self.endpoint = endpoint
        self._lock = threading.Lock()  # the tick and the worker may both report
        self._shown: tuple[EndpointState, str] | None = None  # what was last written

    def backoff(self) -> Backoff:
        return self.store.endpoints.get(self.endpoint).backoff

    def failed(self, message: str, now: float, back_off: bool = True) -> None:
        """The endpoint failed: error state and an event; with `back_off`, its kind is left
        alone for a doubling delay."""
        with self._lock:
            msg = one_line(message)
            if back_off:
                backoff = self.backoff().failed(now)
                self.store.endpoints.set_backoff(self.endpoint, backoff)
                msg = (f"{msg} (attempt {backoff.failures}; retry in "
                       f"{backoff.wait(now):.0f}s)")
            log.warning("endpoint %s: %s", self.endpoint, msg)
            with self.store.tx():
                self.store.endpoints.set_state(self.endpoint, EndpointState.ERROR, msg, now)
                self.store.endpoints.event(self.endpoint, EndpointState.ERROR.value, msg, now)
            self._shown = (EndpointState.ERROR, msg)

    def ok(self, now: float, message: str = "", down_by: str | None = None,
           reset: bool = False) -> None:
        """The endpoint works (or is down, as an operator asked); after an error, say it
        recovered."""
        with self._lock:
            if reset or self.backoff().failures:
                self.store.endpoints.set_backoff(self.endpoint, Backoff())
            state = EndpointState.DOWN if down_by else EndpointState.OK
            if down_by and not message:
                message = f"taken down by {down_by}"
            if self._shown == (state, message):
                return  # write only what changed
            with self.store.tx():
                self.store.endpoints.set_state(self.endpoint, state, message, now)
                if self._shown is not None and self._shown[0] == EndpointState.ERROR:
                    self.store.endpoints.event(self.endpoint, state.value,
                                               message or "the endpoint works again", now)
            self._shown = (state, message)

    def report(self, outcome: Outcome, now: float) -> None:
        if outcome.error is not None:
            self.failed(outcome.error, now, outcome.back_off)
        else:
            self.ok(now, outcome.message, outcome.down_by, reset=outcome.reset)
