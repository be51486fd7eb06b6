"""The reconcile loop: for every endpoint, whatever its kind, observe -> decide (pure) ->
plan -> apply, once per tick.

Each tick first records what the world reports (machines gone, pilots silent, jobs stalled),
then has each endpoint decide what it should have (controller/reconcile/endpoint.py says how a
kind plugs in). Slow work (applies, Pulumi previews and ups, Ansible runs) goes to the
endpoint's own worker thread, so one slow or hanging cloud holds up no other endpoint and no
silent pilot goes unnoticed. Driver errors become endpoint state and a back-off, never
exceptions out of the loop; anything else that goes wrong is a bug, logged with its
traceback and not backed off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from controller.config.settings import Settings
from controller.domain.budgets import withhold
from controller.domain.jobs import JobState
from controller.domain.runtime_prediction import predicted, with_prediction
from controller.domain.scheduling import Decision
from controller.drivers.base import Driver
from controller.errors import CloudpilotError, DriverError, StorageError
from controller.reconcile.endpoint import EndpointKind, LoopEnv, Step, Tick, one_line
from controller.reconcile.registry import make_endpoint
from controller.reconcile.status import EndpointStatus
from controller.services import budgets
from controller.store import Store

log = logging.getLogger("cloudpilot.loop")


@dataclass
class TickResult:
    decisions: list[Decision]
    rescheduled: int = 0


class Reconciler:
    """The loop over all endpoints, each built by its kind (registry.py) with the driver its
    config names; with `drivers` (tests), only the endpoints named there, with those drivers.
    `last` holds each endpoint's latest decision (the API shows it)."""

    def __init__(self, settings: Settings, store: Store,
                 drivers: Mapping[str, Driver] | None = None,
                 clock: Callable[[], float] = time.time,
                 wake: Callable[[], None] = lambda: None,
                 tick_soon: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.env = LoopEnv(settings, store, clock, wake, tick_soon)
        self.endpoints: list[EndpointKind] = [
            make_endpoint(ep, self.env, None if drivers is None else drivers[ep.name])
            for ep in settings.endpoints if drivers is None or ep.name in drivers]
        self.status = {e.name: EndpointStatus(store, e.name) for e in self.endpoints}
        self.last: dict[str, Decision] = {}

    def lead(self, epoch: int = 0, leading: Callable[[], bool] = lambda: True) -> None:
        """This process now runs the loop, as leader `epoch`: at its start, or taking over
        from another controller process (a shared PostgreSQL store). `leading` says whether
        it still leads at an instant (checked before each change a driver makes). Each
        endpoint re-reads its driver's truth and picks up what the last leader left half
        done."""
        self.env.epoch, self.env.leading = epoch, leading
        now = self.clock()
        for e in self.endpoints:
            try:
                e.lead(now)
            except Exception:
                log.exception("endpoint %s: taking over failed", e.name)

    def tick(self) -> TickResult:
        now = self.clock()
        requeued = 0
        ready = []
        for e in self.endpoints:
            if self._waiting(e, now):
                continue
            try:
                e.observe(now)
            except DriverError as err:  # a driver failure is data: record it, keep going
                self.status[e.name].failed(f"observe failed: {one_line(err)}", now)
                continue
            except StorageError as err:  # the database is busy or away: the next tick again
                log.warning("endpoint %s: observing failed: %s", e.name, err.message)
                continue
            except Exception:
                log.exception("endpoint %s: observing failed (a bug)", e.name)
                continue
            ready.append(e)
        # a silent pilot's jobs go back to the queue only once their lease has surely run out
        # (lease + margin): by then the payload's shepherd has ended it (issue 11)
        if now - self.settings.lease > self.env.started:
            silent = self.store.jobs.stall(expired_before=now - self.settings.lease_margin,
                                           now=now)
            requeued += sum(1 for _, s in silent if s == JobState.WAITING)
        # the queue by task queue, once a tick for every endpoint (a GROUP BY over all waiting
        # jobs); jobs requeued while endpoints are decided are seen at the next tick. Each
        # task queue carries its next job's predicted run time, from the run times its owner's
        # jobs really had (the store's history; the same predictor as the simulator's)
        queues = self.store.jobs.queue_snapshot()
        held = self.store.jobs.held_jobs()
        history = self.store.runtimes.history([q.id for q in queues] + [j.queue for j in held],
                                              [q.owner for q in queues] + [j.owner for j in held])
        # issue 25: a group over its monthly budget gets no new machines for its work
        over = budgets.overruns(self.store, self.settings, now)
        kept, withheld = withhold([with_prediction(q, history) for q in queues], over)
        tick = Tick(now, kept)
        # the matcher (the pilots' route, in this process) places by the same predictions
        self.store.jobs.predicted = predicted(tick.queues, held, history)
        decisions = []
        for e in ready:
            try:
                step = e.decide(tick)
            except DriverError as err:
                self.status[e.name].failed(one_line(err), now)
                continue
            except StorageError as err:
                log.warning("endpoint %s: deciding failed: %s", e.name, err.message)
                continue
            except Exception:
                log.exception("endpoint %s: deciding failed (a bug)", e.name)
                continue
            self._take(e, step, now, withheld)
            decisions.append(step.decision)
            requeued += step.requeued
        return TickResult(decisions, requeued)

    def _waiting(self, e: EndpointKind, now: float) -> bool:
        """Whether the endpoint sits this tick out: its worker is busy (its last decision
        stands; past the timeout, that is recorded once), or it is backing off."""
        if e.worker.busy:
            if e.worker.overdue(now) and not e.worker.overdue_reported:
                e.worker.overdue_reported = True
                try:
                    self.status[e.name].failed(e.timed_out(now), now)
                except Exception:
                    log.exception("endpoint %s: recording a timeout failed", e.name)
            return True
        return not self.status[e.name].backoff().ready(now)

    def _take(self, e: EndpointKind, step: Step, now: float,
              withheld: Sequence[str] = ()) -> None:
        """Record the step's tick (with why work was withheld from it), keep its decision,
        report or start its work."""
        self.last[e.name] = step.decision
        if step.inputs is not None and step.recorded is not None:
            step.recorded["reasons"] = [*step.recorded.get("reasons", []), *withheld]
            try:
                self.store.ticks.record(e.name, now, step.inputs, step.recorded,
                                        self.settings.tick_retention)
            except (CloudpilotError, OSError, ValueError) as err:  # must not stop work
                log.warning("tick of %s not recorded: %s", e.name, err)
        status = self.status[e.name]
        if step.outcome is not None:
            status.report(step.outcome, now)
        work = step.work
        if work is not None:
            def run() -> None:
                outcome = work()
                if outcome is not None:
                    status.report(outcome, self.clock())

            e.worker.start(step.what or "work", run)

    def work(self, name: str) -> tuple[str, float | None] | None:
        """What the endpoint's worker does now and since when (None: it is idle)."""
        for e in self.endpoints:
            if e.name == name and e.worker.busy:
                return e.worker.what, e.worker.started_at
        return None

    # for tests and shutdown ------------------------------------------------------------------
    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no endpoint's worker is busy; False if one still is after `timeout`."""
        deadline = time.monotonic() + timeout
        return all(e.worker.wait(max(0.0, deadline - time.monotonic()))
                   for e in self.endpoints)

    def close(self) -> None:
        for e in self.endpoints:
            try:
                e.close()
            except Exception:
                log.exception("endpoint %s: closing failed", e.name)
