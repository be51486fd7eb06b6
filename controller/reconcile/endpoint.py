"""The interface between the reconcile loop and one endpoint, whatever it is made of.

The loop knows "an endpoint"; each **kind** of endpoint brings its own observe, decide and
apply behind this interface, in its own module:

    cloud.py   local processes and Pulumi stacks (AWS, OpenStack): machines are created and
               deleted by name through plans (reviewed, approved, applied)
    hosts.py   a pool of SSH hosts: pilots are deployed and stopped with Ansible
    batch.py   a batch system over SSH (Slurm, Grid Engine): pilots are batch jobs,
               submitted, watched and cancelled on the site's login node

A kind that comes with cloudpilot is a module with a class that implements `EndpointKind`,
and one line in `registry.py` mapping its `driver` name to it and a settings model of its own
in config/settings.py. A site adds a kind from its own package instead, through the entry
point group `cloudpilot.endpoint_kinds` (controller/kinds.py; tests/plugins/tiny_kind is the
smallest one). The loop does not change for either.

Every kind decides the same way: one request value in (`Tick`: the time and the task queue
snapshot), one reply value out (`Step`), so the loop, `explain` and `replay` treat them alike;
each kind records its domain function's inputs as one value too (domain/ticks.py:
TickInputs, HostTickInputs, BatchTickInputs, each with `decide()`), which `replay` decides
again.

Each tick, for every endpoint whose worker is idle and whose back-off has passed, the loop
calls, in its own thread:

1. `observe(now)`: record what the world reports (machines gone, addresses). Fast: it reads
   what the driver already knows (a directory, a cache); a driver that cannot tell raises
   DriverError, which the loop records as the endpoint's error state with a back-off.
2. `decide(tick)`: build the inputs of a pure domain function (domain.scheduling.decide,
   domain.hostpool.decide_hosts...), call it, record what the world said (lost, failed
   machines) and return a `Step`: the decision, the tick to record (for `cloudpilot explain`
   and `replay`), the jobs rescheduled, the endpoint's state when nothing is to be done, and
   the slow work to do, if any.
3. The slow work (a driver's apply, a Pulumi preview and up, an Ansible run) runs in the
   endpoint's own `Worker` thread, never in the tick, one piece at a time, with a timeout
   (`apply_timeout`). While it runs the endpoint is not decided again: its last decision
   stands, and other endpoints are decided and silent pilots noticed as usual. The work
   returns an `Outcome`, which the loop turns into the endpoint's state, events and back-off
   exactly as for every other kind.

What every kind gets from the loop, the same way: the endpoint's state (ok, error, down) and
message, endpoint events on failure and recovery, a doubling back-off after a failure,
recorded ticks, a worker with a timeout, and unexpected exceptions logged with their traceback
(a bug in cloudpilot is not a cloud outage, and is not backed off).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controller.config.settings import EndpointConfig, Settings
from controller.domain.jobs import JobState
from controller.domain.scheduling import Decision
from controller.domain.taskqueues import TaskQueue
from controller.reconcile.worker import Worker
from controller.store import Store

log = logging.getLogger("cloudpilot.loop")


@dataclass
class LoopEnv:
    """What every endpoint kind may use: the store, the settings, the clock, and `wake` (ask
    the loop and long-polling pilots to look again, e.g. after jobs went back to the queue;
    safe from any thread)."""

    settings: Settings
    store: Store
    clock: Callable[[], float] = time.time
    wake: Callable[[], None] = lambda: None
    # ask the loop alone for a tick now (an offer refused: the next cheapest is decided at
    # once, not a loop_interval later); safe from any thread
    tick_soon: Callable[[], None] = lambda: None
    # After a controller restart, pilots need a moment to reach it again: heartbeats missed
    # while it was down must not count, so silence is measured from this instant at most.
    started: float = 0.0
    # issue 26: the epoch of the leadership this process runs the loop under (0: SQLite),
    # written into the plans it applies and checked where their results are recorded
    epoch: int = 0
    # issue 26: whether this process still leads at this instant (PostgreSQL: its lock's
    # session is alive): the precondition of each change a driver makes (`fence`)
    leading: Callable[[], bool] = lambda: True

    def __post_init__(self) -> None:
        self.started = self.started or self.clock()

    def requeue(self, machine: str, why: str, now: float, dead: bool = False) -> int:
        """Put the jobs held on a machine that is gone back in the queue; how many went. Only
        those whose lease has surely run out (lease + margin: their payloads' shepherds have
        ended them), unless `dead`: the driver has ended everything of the machine, payloads
        included. The others follow when their leases run out (issue 11: never two attempts
        of a job running at once)."""
        moved = self.store.jobs.stall(
            machines=[machine], now=now, why=why,
            expired_before=None if dead else now - self.settings.lease_margin)
        return sum(1 for _, s in moved if s == JobState.WAITING)


@dataclass(frozen=True)
class Tick:
    """One pass of the loop, as the endpoints see it."""

    now: float
    queues: tuple[TaskQueue, ...]  # the task queues with waiting jobs, one snapshot a tick


@dataclass(frozen=True)
class Outcome:
    """What an endpoint's step or work came to, for its state: `error` says what failed
    (None: all went well); `back_off` leaves the endpoint alone for a while (False when the
    failure is one host's, which has its own back-off); `message` is the state's message when
    all went well; `down_by` says the endpoint is down; `reset` clears the back-off (a change
    was applied)."""

    error: str | None = None
    back_off: bool = True
    message: str = ""
    down_by: str | None = None
    reset: bool = False


# The slow part of a step; its Outcome (None: nothing to report, e.g. it ended after its
# timeout had been reported)
Work = Callable[[], Outcome | None]


@dataclass(frozen=True)
class Step:
    """What `decide` returns to the loop."""

    decision: Decision
    inputs: dict[str, Any] | None = None  # the tick's inputs, JSON-ready (None: not recorded)
    recorded: dict[str, Any] | None = None  # the domain function's own decision, JSON-ready
    requeued: int = 0
    work: Work | None = None  # the slow part, for the endpoint's worker
    what: str = ""  # what the work is ("applying plan 4"), shown while it runs
    outcome: Outcome | None = None  # the endpoint's state now (None: the work will tell)


class EndpointKind(Protocol):
    """Reconcile one endpoint (see the module's docstring)."""

    name: str
    worker: Worker

    @property
    def config(self) -> EndpointConfig:
        """The endpoint's settings (each kind's own model)."""
        ...

    def observe(self, now: float) -> None:
        """Record what the world reports now. Fast; DriverError when the driver cannot tell."""
        ...

    def decide(self, tick: Tick) -> Step:
        """Decide what the endpoint should do; record what is known now; return the step."""
        ...

    def timed_out(self, now: float) -> str:
        """The worker's work ran past `apply_timeout`: record it (a plan failed...); return
        the message for the endpoint's state."""
        ...

    def lead(self, now: float) -> None:
        """This process now runs the loop (at start; or, with several controller processes,
        taking over from one that died): pick up what the last one left half done."""
        ...

    def close(self) -> None:
        """The controller is stopping: cancel what can be cancelled."""
        ...


def one_line(e: object) -> str:
    """An error message on one line, bounded (for states, events and plans)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " / ".join(lines[:3])[:500] or type(e).__name__
