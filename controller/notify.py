"""Wake long-polling pilots (and the loop) when the queue changes, and release them all at
once when the controller stops."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Sequence

from controller.domain.jobs import Requirements
from controller.domain.matching import SlotOffer, to_wake
from controller.errors import TemporaryError

Needs = Sequence[tuple[Requirements, int]]  # new jobs: each shape and how many


class ControllerStopping(TemporaryError):
    """The controller is stopping; retry in a moment."""


class _Stopped(asyncio.Event):
    """The event handed out once the controller is stopping: waiting on it ends the wait with
    ControllerStopping (503, retry), so a long-poll never holds up a graceful stop."""

    async def wait(self) -> bool:  # type: ignore[override]
        raise ControllerStopping()


class Notifier:
    """Each long-poll takes its own event (`current()`) before it looks for work, so a change
    between a failed match and the wait is never missed, and says what it can take
    (`offers()`) once it knows. `fire(n)` wakes the n long-polls that have waited longest (n
    new jobs need at most n pilots: a thousand waiting pilots do not all query the database
    for each submission); `fire(n, needs=...)` only those whose offer fits the new jobs, as
    many as each shape of job needs (domain/matching.py to_wake); `fire()` wakes them all.
    The loop watches every change through `changes()`."""

    def __init__(self) -> None:
        self._waiters: deque[weakref.ref[asyncio.Event]] = deque()
        # what each waiter can take (unknown: anything)
        self._offers: weakref.WeakKeyDictionary[asyncio.Event, SlotOffer] = (
            weakref.WeakKeyDictionary())
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        # passes each fire on to the other controller processes (a shared PostgreSQL store)
        self.relay: Callable[[int | None], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def current(self) -> asyncio.Event:
        """A new event for one waiter, set by the next fire that reaches it."""
        if self.stopping:
            return _Stopped()
        ev = asyncio.Event()
        self._waiters.append(weakref.ref(ev))
        if len(self._waiters) > 4096:  # forget the waits that ended without a fire
            self._waiters = deque(r for r in self._waiters if r() is not None)
        return ev

    def offers(self, ev: asyncio.Event, offer: SlotOffer) -> None:
        """The waiter holding `ev` can take work that fits `offer` (and nothing else)."""
        self._offers[ev] = offer

    def waiting(self) -> int:
        """How many long-polls wait now: each said what it can take, and no fire reached it
        (a long-poll that ends drops its event, and so its entry)."""
        for _ in range(3):
            try:
                return sum(not ev.is_set() for ev in list(self._offers))
            except RuntimeError:  # a long-poll came or went meanwhile (the loop's thread)
                continue
        return 0

    def changes(self) -> asyncio.Event:
        """An event set by the next fire, whatever its n (for the reconcile loop)."""
        return self._changed

    def fire(self, n: int | None = None, *, needs: Needs | None = None,
             relay: bool = True) -> None:
        """Wake waiters: all of them, or the n that wait longest (here, and in the other
        controller processes unless `relay` is off); with `needs` (new jobs' requirements
        and counts), here only waiters that can take them. Safe from any thread: a sync route (run
        in the thread pool) or an endpoint's worker hands the wake-up to the event loop's
        thread, since an asyncio.Event set from another thread does not wake a loop asleep in
        select()."""
        if relay and self.relay is not None:
            self.relay(n)
        loop = self._loop
        if loop is None or loop.is_closed() or self._on(loop):
            self._fire(n, needs)
        else:
            loop.call_soon_threadsafe(self._fire, n, needs)

    @staticmethod
    def _on(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _fire(self, n: int | None, needs: Needs | None = None) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if needs is not None:
            self._wake_fitting(needs)
            return
        woken = 0
        while self._waiters and (n is None or woken < n):
            ev = self._waiters.popleft()()
            if ev is not None and not ev.is_set():
                ev.set()
                woken += 1

    def _wake_fitting(self, needs: Needs) -> None:
        waiting = [ev for ev in (r() for r in self._waiters)
                   if ev is not None and not ev.is_set()]
        wake = set(to_wake([self._offers.get(ev) for ev in waiting], needs))
        for i in wake:
            waiting[i].set()
        self._waiters = deque(weakref.ref(ev) for i, ev in enumerate(waiting)
                              if i not in wake)

    def stop(self) -> None:
        """The controller is stopping (call from the event loop's thread): wake every waiter;
        later waits end at once."""
        self.stopping = True
        self._fire(None)
