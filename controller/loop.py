"""The reconcile loop: observe -> decide (pure) -> plan -> apply, once per tick.

Each tick first records what the world reports (machines gone, pilots silent, jobs stalled),
then asks domain.scheduling.decide() what each endpoint should have, then lets the endpoint's
driver diff and apply it. Driver errors become endpoint state, never exceptions out of the loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.domain import ticks
from controller.domain.jobs import JobState
from controller.domain.machines import LIVE_STATES, MachineState, MachineView
from controller.domain.scheduling import Budget, Decision, decide
from controller.drivers.base import Driver, ObservedMachine
from controller.drivers.ssh import SshDriver
from controller.errors import CloudpilotError, NotFound
from controller.hostloop import reconcile_hosts
from controller.prices import PriceSource, make_price_source
from controller.settings import EndpointConfig, Settings
from controller.store import Store

log = logging.getLogger("cloudpilot.loop")
M = MachineState


@dataclass
class TickResult:
    decisions: list[Decision]
    rescheduled: int = 0


class Reconciler:
    def __init__(self, settings: Settings, store: Store, drivers: dict[str, Driver],
                 clock: Callable[[], float] = time.time,
                 price_sources: dict[str, PriceSource] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.drivers = drivers
        self.clock = clock
        self.last: dict[str, Decision] = {}
        self.prices = price_sources if price_sources is not None else {
            ep.name: make_price_source(ep.prices, {t.name for t in ep.machine_types})
            for ep in settings.endpoints if ep.prices is not None}
        # After a controller restart, pilots need a moment to reach it again: heartbeats missed
        # while it was down must not count, so silence is measured from this instant at most.
        self.started = clock()

    def tick(self) -> TickResult:
        now = self.clock()
        requeued = 0
        seen: dict[str, list[ObservedMachine]] = {}  # what each driver reports, once a tick
        for ep in self.settings.endpoints:
            driver = self.drivers.get(ep.name)
            if driver is None:
                continue
            try:
                seen[ep.name] = driver.observe()
            except Exception as e:  # a driver failure is data: record it, keep going
                log.warning("observe %s failed: %s", ep.name, e)
                self.store.machines.set_endpoint_state(ep.name, "error", f"observe failed: {e}")
                continue
            if ep.driver != "ssh":  # SSH hosts: heartbeats tell (controller/hostloop.py)
                requeued += self._gone(ep.name, seen[ep.name], now)
        cutoff = now - self.settings.stalled_after
        if cutoff > self.started:
            silent = self.store.jobs.stall(silent_since=cutoff, now=now)
            requeued += sum(1 for _, s in silent if s == JobState.WAITING)
        decisions = []
        for ep in self.settings.endpoints:
            driver = self.drivers.get(ep.name)
            if driver is None or ep.name not in seen:
                continue
            d, n = self._reconcile(ep.name, driver, [m.name for m in seen[ep.name]], now)
            decisions.append(d)
            requeued += n
        return TickResult(decisions, requeued)

    # observe -----------------------------------------------------------------------------
    def _gone(self, endpoint: str, observed: list[ObservedMachine], now: float) -> int:
        """Machines the driver no longer runs: stopped if idle, lost (jobs rescheduled) if not."""
        seen = {m.name: m for m in observed}
        busy = self.store.jobs.busy_by_machine()
        requeued = 0
        for m in self.store.machines.find(endpoint, live=True):
            if not m["managed"]:
                continue  # a pilot that joined on its own: heartbeats tell if it is alive
            obs = seen.get(m["name"])
            if obs is not None and obs.alive:
                continue
            state = M(m["state"])
            if state == M.REQUESTED:
                continue  # not created yet
            if busy.get(m["name"]):
                self.store.machines.move(m["name"], M.LOST, "its pilot process is gone", now)
                requeued += self._requeue(m["name"], "machine lost: pilot process gone", now)
            elif state == M.STOPPING:
                self.store.machines.move(m["name"], M.STOPPED, now=now)
            else:
                self.store.machines.move(m["name"], M.STOPPED,
                                         "its pilot exited on its own", now)
        return requeued

    def _requeue(self, machine: str, why: str, now: float) -> int:
        moved = self.store.jobs.stall(machines=[machine], now=now, why=why)
        return sum(1 for _, s in moved if s == JobState.WAITING)

    # decide, plan, apply -----------------------------------------------------------------
    def _views(self, endpoint: str, slots: int) -> list[MachineView]:
        busy = self.store.jobs.busy_by_machine()
        held = self.store.jobs.busy_resources_by_machine()
        views = []
        for m in self.store.machines.find(endpoint, live=True):
            b = busy.get(m["name"], 0)
            info = json.loads(m["info"]) if m.get("info") else {}
            cores, mem = held.get(m["name"], (0, 0))
            views.append(MachineView(
                name=m["name"], endpoint=endpoint, state=M(m["state"]),
                created_at=m["created_at"], slots=info.get("slots", slots), busy_slots=b,
                free_cores=max(info.get("cores", 0) - cores, 0),
                free_memory_mb=max(info.get("memory_mb", 0) - mem, 0),
                idle_since=None if b else (m["last_busy_at"] or m["created_at"]),
                last_seen=max(m["last_seen"] or 0.0, self.started) if m["last_seen"] else None,
                managed=bool(m["managed"]), pool=info.get("pool"),
            ))
        return views

    def _budget(self, endpoint: str) -> Budget:
        """What the controller-wide limits leave for this endpoint: minus the other endpoints'
        live machines and their spend (at the prices they were started at)."""
        s = self.settings
        if s.max_spend_per_hour is None and s.max_machines_total is None:
            return Budget()
        others = [m for m in self.store.machines.find(live=True) if m["endpoint"] != endpoint]
        spend = sum(json.loads(m["info"]).get("price", 0.0) for m in others if m.get("info"))
        return Budget(
            None if s.max_machines_total is None else s.max_machines_total - len(others),
            None if s.max_spend_per_hour is None else s.max_spend_per_hour - spend)

    def _prices(self, ep: EndpointConfig, now: float) -> dict[str, float]:
        source = self.prices.get(ep.name)
        if source is None:
            return {}
        prices = source.prices(now)
        if source.error:
            log.warning("endpoint %s: %s", ep.name, source.error)
        return prices

    def _record(self, inputs: ticks.TickInputs, decision: Decision) -> None:
        try:
            self.store.ticks.record(decision.endpoint, inputs.now, ticks.encode(inputs),
                                    ticks.decision_to_dict(decision),
                                    self.settings.tick_retention)
        except (CloudpilotError, OSError, ValueError) as e:  # explainability must not stop work
            log.warning("tick of %s not recorded: %s", decision.endpoint, e)

    def _reconcile(self, endpoint: str, driver: Driver, current: list[str],
                   now: float) -> tuple[Decision, int]:
        ep = self.settings.endpoint(endpoint)
        assert ep is not None
        if isinstance(driver, SshDriver):
            self.last[endpoint], requeued = reconcile_hosts(self, ep, driver, now)
            return self.last[endpoint], requeued
        inputs = ticks.snapshot(ep.spec(), self.store.jobs.queue_snapshot(),
                                self._views(endpoint, ep.slots), now,
                                self.store.machines.last_seq(endpoint), self._prices(ep, now),
                                self._budget(endpoint) if ep.machine_types else None)
        decision = decide(inputs.spec, inputs.queues, inputs.machines, now, inputs.last_seq,
                          prices=inputs.prices, budget=inputs.budget)
        self.last[endpoint] = decision
        self._record(inputs, decision)
        requeued = 0
        for r in decision.remove:
            self.store.machines.move(r.name, r.to, r.reason, now)
            if r.to in (M.LOST, M.FAILED):
                requeued += self._requeue(r.name, f"machine {r.to.value}: {r.reason}", now)
        why = "; ".join(decision.reasons) or "wanted"
        launches = {x.name: x for x in decision.launches}
        for name in decision.start:
            x = launches.get(name)
            self.store.machines.create(name, endpoint, _seq(name), x.reason if x else why, now,
                                       info=x.info() if x else None)
        diff = driver.plan(current, decision.wanted)
        if ep.machine_types and diff.create:
            diff = dataclasses.replace(diff, specs=self._specs(diff.create))
        if diff.empty:
            return decision, requeued
        log.info("endpoint %s: %s", endpoint, diff.describe().replace("\n", " "))
        try:
            result = driver.apply(diff)
        except Exception as e:
            log.warning("apply on %s failed: %s", endpoint, e)
            self.store.machines.set_endpoint_state(endpoint, "error", f"apply failed: {e}")
            return decision, requeued
        for name in result.created:
            self.store.machines.move(name, M.BOOTING, now=now)
        for name, msg in result.errors.items():
            self.store.machines.move(name, M.FAILED, msg, now)
        for name in result.deleted:
            try:
                was = M(self.store.machines.get(name)["state"])
            except NotFound:
                continue  # a leftover the store never knew
            if was in LIVE_STATES | {M.LOST}:
                self.store.machines.move(name, M.STOPPED, "removed by the driver", now)
        state, msg = ("error", "; ".join(result.errors.values())) if result.errors else ("ok", "")
        self.store.machines.set_endpoint_state(endpoint, state, msg, now)
        return decision, requeued


    def _specs(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in names:
            try:
                info = self.store.machines.get(name).get("info")
            except NotFound:
                continue
            if info:
                out[name] = json.loads(info)
        return out


def _seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])
