"""The notifier wakes waiters at once, also when fired from another thread (a sync route in
the thread pool, an endpoint's worker)."""

import asyncio
import threading
import time

from controller.notify import Notifier


def run(coro):
    """Run a coroutine on a loop of its own (asyncio.run would unset the main thread's loop,
    which other tests' libraries expect)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_a_fire_from_another_thread_wakes_the_loop_at_once():
    async def main() -> float:
        n = Notifier()
        n.bind(asyncio.get_running_loop())
        event = n.current()
        threading.Timer(0.1, n.fire).start()  # fired from another thread
        t0 = time.monotonic()
        await asyncio.wait_for(event.wait(), timeout=5)
        return time.monotonic() - t0

    assert run(main()) < 2.0


def test_a_fire_on_the_loop_replaces_the_event():
    async def main() -> None:
        n = Notifier()
        n.bind(asyncio.get_running_loop())
        first = n.current()
        n.fire()
        assert first.is_set() and not n.current().is_set()

    run(main())
