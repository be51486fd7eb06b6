"""The notifier wakes waiters at once, also when fired from another thread (a sync route in
the thread pool, an endpoint's worker)."""

import asyncio
import threading
import time

from controller.domain.jobs import Requirements
from controller.domain.matching import SlotOffer, to_wake
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


PLAIN = SlotOffer("manual", 4, 4096, frozenset({"linux"}))
GPU = SlotOffer("manual", 4, 4096, frozenset({"linux", "gpu"}))


def test_a_submission_wakes_only_pilots_that_can_take_its_jobs():
    """20 plain pilots and one GPU pilot wait (the GPU one last, waiting least long): a GPU
    job wakes the GPU pilot and no other; three plain jobs wake the three plain pilots that
    have waited longest; a job nobody fits wakes nobody."""
    async def main() -> None:
        n = Notifier()
        n.bind(asyncio.get_running_loop())
        events = [n.current() for _ in range(21)]
        for ev, offer in zip(events, [PLAIN] * 20 + [GPU], strict=True):
            n.offers(ev, offer)
        n.fire(1, needs=[(Requirements(tags=frozenset({"gpu"})), 1)])
        assert [i for i, ev in enumerate(events) if ev.is_set()] == [20]
        n.fire(3, needs=[(Requirements(), 3)])
        assert [i for i, ev in enumerate(events) if ev.is_set()] == [0, 1, 2, 20]
        n.fire(1, needs=[(Requirements(cores=64), 1)])
        assert sum(ev.is_set() for ev in events) == 4

    run(main())


def test_which_pilots_to_wake_is_decided_as_a_plain_function():
    gpu, plain = Requirements(tags=frozenset({"gpu"})), Requirements()
    waiting = [PLAIN, GPU, None, PLAIN]  # None: a pilot in the middle of a look
    # the one in a look is woken too (it may have read the queues before the job came), but
    # it does not take the GPU pilot's place (issue 19)
    assert to_wake(waiting, [(gpu, 1)]) == [1, 2]
    assert to_wake([None, PLAIN, GPU], [(gpu, 1)]) == [0, 2]  # before: [0], the GPU pilot slept
    assert to_wake(waiting, [(gpu, 2)]) == [1, 2]
    # the GPU job is served first: the GPU pilot is kept for it, the plain ones take the rest
    assert to_wake(waiting, [(plain, 2), (gpu, 1)]) == [0, 1, 2, 3]
    assert to_wake([GPU, PLAIN], [(plain, 1), (gpu, 1)]) == [0, 1]
    assert to_wake([GPU, PLAIN, PLAIN], [(plain, 1), (gpu, 1)]) == [0, 1]
    assert to_wake(waiting, [(Requirements(cores=8), 5)]) == [2]
    assert to_wake([PLAIN, PLAIN], [(gpu, 1)]) == []  # none that cannot take it
