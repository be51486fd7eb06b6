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
        """Call from the event loop's thread."""
        old, self._event = self._event, asyncio.Event()
        old.set()

    def fire_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.fire)
