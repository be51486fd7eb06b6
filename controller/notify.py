"""Wake long-polling pilots (and the loop) when the queue changes, and release them all at
once when the controller stops."""

from __future__ import annotations

import asyncio

from controller.errors import TemporaryError


class ControllerStopping(TemporaryError):
    """The controller is stopping; retry in a moment."""


class _Stopped(asyncio.Event):
    """The event handed out once the controller is stopping: waiting on it ends the wait with
    ControllerStopping (503, retry), so a long-poll never holds up a graceful stop."""

    async def wait(self) -> bool:  # type: ignore[override]
        raise ControllerStopping()


class Notifier:
    """An asyncio event that is replaced each time it fires: waiters take the current one,
    so a change that happens between a failed match and the wait is never missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def current(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        """Call from the event loop's thread."""
        if self.stopping:
            return
        old, self._event = self._event, asyncio.Event()
        old.set()

    def fire_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.fire)

    def stop(self) -> None:
        """The controller is stopping: wake every waiter; later waits end at once."""
        old, self._event = self._event, _Stopped()
        self.stopping = True
        old.set()
