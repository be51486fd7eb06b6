"""Wake long-polling pilots (and the loop) when the queue changes."""

from __future__ import annotations

import asyncio


class Notifier:
    """An asyncio event that is replaced each time it fires: waiters take the current one,
    so a change that happens between a failed match and the wait is never missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def current(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        """Wake every waiter now. Safe from any thread: a sync route (run in the thread
        pool) or an endpoint's worker hands the wake-up to the event loop's thread, since an
        asyncio.Event set from another thread does not wake a loop asleep in select()."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._on(loop):
            self._fire()
        else:
            loop.call_soon_threadsafe(self._fire)

    @staticmethod
    def _on(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _fire(self) -> None:
        old, self._event = self._event, asyncio.Event()
        old.set()
