"""The reconcile loop: observe -> decide (pure) -> plan -> apply, once per tick.

Each tick first records what the world reports (machines gone, pilots silent, jobs stalled),
then asks domain.scheduling.decide() what each endpoint should have, then lets the endpoint's
driver diff it into a plan. A plan is kept in the store; it is applied at once when the
endpoint's policy allows (auto_apply, or under its threshold), else when an operator approves
it (a later tick applies it). Driver errors become endpoint state and a back-off before the
driver is asked again, never exceptions out of the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.config.settings import EndpointConfig, Settings
from controller.domain import ticks
from controller.domain.jobs import JobState
from controller.domain.machines import LIVE_STATES, MachineState, MachineView
from controller.domain.plans import (
    Backoff,
    Plan,
    PlanState,
    auto_approval,
    down_decision,
    plan_cost,
)
from controller.domain.scheduling import Budget, Decision, decide
from controller.domain.taskqueues import TaskQueue
from controller.drivers.base import ApplyResult, Driver, ObservedMachine
from controller.drivers.prices import PriceSource, make_price_source
from controller.drivers.ssh import SshDriver
from controller.errors import CloudpilotError, NotFound
from controller.reconcile import pairing
from controller.reconcile.hosts import reconcile_hosts
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
        self._shown: dict[str, tuple[str, str]] = {}  # endpoint state last written
        self.queue: list[TaskQueue] = []  # this tick's queue snapshot

    def tick(self) -> TickResult:
        now = self.clock()
        requeued = 0
        seen: dict[str, list[ObservedMachine]] = {}  # what each driver reports, once a tick
        for ep in self.settings.endpoints:
            driver = self.drivers.get(ep.name)
            if driver is None:
                continue
            if not self.store.plans.marks(ep.name).backoff.ready(now):
                continue  # a failing driver is left alone until its retry time
            try:
                seen[ep.name] = driver.observe()
            except Exception as e:  # a driver failure is data: record it, keep going
                self._failed(ep.name, f"observe failed: {e}", now)
                continue
            self.store.machines.record_observed(
                ep.name, {m.name: (m.address, m.detail) for m in seen[ep.name]})
            if ep.driver != "ssh":  # SSH hosts: heartbeats tell (controller/reconcile/hosts.py)
                requeued += self._gone(ep.name, seen[ep.name], now)
            pairing.sync(self.store, ep, seen[ep.name], now)
        # a silent pilot's jobs go back to the queue only once their lease has surely run out
        # (lease + margin): by then the pilot has killed the payload (issue 11)
        if now - self.settings.stalled_after > self.started:
            silent = self.store.jobs.stall(expired_before=now - self.settings.lease_margin,
                                           now=now)
            requeued += sum(1 for _, s in silent if s == JobState.WAITING)
        # the queue by task queue, once a tick for every endpoint (a GROUP BY over all waiting
        # jobs); jobs requeued while endpoints are decided are seen at the next tick
        self.queue = self.store.jobs.queue_snapshot()
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
        """A lost machine's jobs back to the queue: at once when its driver has killed all that
        ran there (payloads included), else only those whose lease has surely run out; the
        others follow when theirs does (issue 11: never two attempts running at once)."""
        try:
            endpoint = self.store.machines.get(machine)["endpoint"]
        except NotFound:
            endpoint = ""
        reap = getattr(self.drivers.get(endpoint), "reap", None)
        dead = bool(reap(machine)) if reap is not None else False
        moved = self.store.jobs.stall(
            machines=[machine], now=now, why=why,
            expired_before=None if dead else now - self.settings.lease_margin)
        return sum(1 for _, s in moved if s == JobState.WAITING)

    # decide, plan, apply -----------------------------------------------------------------
    def _views(self, endpoint: str, slots: int) -> list[MachineView]:
        busy = self.store.jobs.busy_by_machine()
        held = self.store.jobs.busy_resources_by_machine()
        ep = self.settings.endpoint(endpoint)
        views = []
        for m in self.store.machines.find(endpoint, live=True):
            host = pairing.host_of(ep, m["name"]) if ep else None
            if host is not None:  # a VM in ssh mode: its pilot runs on its joined host
                m = {**m, "last_seen": None}  # the SSH endpoint watches reachability
                with contextlib.suppress(NotFound):
                    m["last_busy_at"] = self.store.machines.get(host)["last_busy_at"]
            b = busy.get(host or m["name"], 0)
            info = json.loads(m["info"]) if m.get("info") else {}
            cores, mem = held.get(host or m["name"], (0, 0))
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
        marks = self.store.plans.marks(endpoint)
        inputs = ticks.snapshot(ep.spec(), self.queue,
                                self._views(endpoint, ep.slots), now,
                                self.store.machines.last_seq(endpoint), self._prices(ep, now),
                                self._budget(endpoint) if ep.machine_types else None)
        decision = decide(inputs.spec, inputs.queues, inputs.machines, now, inputs.last_seq,
                          prices=inputs.prices, budget=inputs.budget)
        self._record(inputs, decision)  # what decide() made of its inputs, for replay
        if marks.down_by:
            decision = down_decision(decision, inputs.machines, marks.down_by)
        self.last[endpoint] = decision
        requeued = 0
        # What the world says (lost, failed) is recorded now; stopping an idle machine is a
        # wish, recorded when a plan that deletes it is applied.
        for r in decision.remove:
            if r.to == M.STOPPING:
                continue
            self.store.machines.move(r.name, r.to, r.reason, now)
            if r.to in (M.LOST, M.FAILED):
                requeued += self._requeue(r.name, f"machine {r.to.value}: {r.reason}", now)
        approved = self.store.plans.open(endpoint, PlanState.APPROVED)
        if approved is not None:  # approved by an operator since the last tick
            self._apply(approved, driver, now)
            return decision, requeued
        try:
            diff = driver.plan(current, decision.wanted)
        except Exception as e:
            self._failed(endpoint, f"plan failed: {e}", now)
            return decision, requeued
        launches = {x.name: x for x in decision.launches}
        if diff.create and (launches or ep.machine_types):  # priced: each machine's type
            diff = dataclasses.replace(diff, specs={
                **self._specs(diff.create),
                **{n: x.info() for n, x in launches.items() if n in diff.create}})
        if diff.empty:
            self.store.plans.withdraw(endpoint, "nothing left to change", now)
            if marks.up_by:
                self.store.plans.ask_up(endpoint, None)
            self._ok(endpoint, marks.down_by, now)
            return decision, requeued
        policy = ep.approval_policy()
        if marks.down_by:
            ok, why, asked_by = True, f"{marks.down_by} (cloudpilot down)", marks.down_by
        elif marks.up_by:
            ok, why, asked_by = True, f"{marks.up_by} (cloudpilot up)", "scheduler"
        else:
            (ok, why), asked_by = auto_approval(policy, diff), "scheduler"
        why_each = {r.name: r.reason for r in decision.remove}
        reasons = [*decision.reasons,
                   *(f"{n}: {launches[n].reason}" for n in diff.create if n in launches),
                   *(f"{n}: {why_each.get(n, 'not wanted')}" for n in diff.delete)]
        plan, new = self.store.plans.propose(diff, reasons, asked_by, plan_cost(policy, diff),
                                             "" if ok else why, now)
        if new:
            log.info("endpoint %s: plan %d: %s", endpoint, plan.id,
                     diff.describe().replace("\n", " "))
        if not ok:
            self._ok(endpoint, marks.down_by, now,
                     f"plan {plan.id} {why} (cloudpilot plan approve {plan.id})")
            return decision, requeued
        if marks.up_by:
            self.store.plans.ask_up(endpoint, None)
        self._apply(self.store.plans.approve(plan.id, why, now), driver, now)
        return decision, requeued

    def _apply(self, plan: Plan, driver: Driver, now: float) -> None:
        """Apply an approved plan and record what it did to each machine. Machines it creates
        are recorded (requested) before the driver is called, so a pilot that registers at once
        finds its machine; the driver's answer moves them on (booting, or failed with its
        message); a driver that raises has created nothing."""
        endpoint = plan.endpoint
        known = {m["name"] for m in self.store.machines.find(endpoint)}
        for name in plan.create:
            if name not in known:
                self.store.machines.create(name, endpoint, _seq(name),
                                           f"{plan.reason_for(name)} (plan {plan.id})", now,
                                           info=dict(plan.specs.get(name) or {}) or None)
        for name in plan.delete:
            if name in known:  # else: a leftover the store never knew
                self.store.machines.move(name, M.STOPPING,
                                         f"{plan.reason_for(name)} (plan {plan.id})", now)
        try:
            result = driver.apply(plan.diff)
        except Exception as e:
            msg = _one_line(e)
            for name in plan.create:
                self.store.machines.move(name, M.FAILED, f"plan {plan.id} failed: {msg}", now)
            self.store.plans.finish(plan.id, PlanState.FAILED, msg, now)
            self._failed(endpoint, f"plan {plan.id} failed: {msg}", now)
            return
        self._record_result(plan, result, known, now)
        if result.errors:
            msg = "; ".join(f"{n}: {m}" for n, m in sorted(result.errors.items()))
            self.store.plans.finish(plan.id, PlanState.FAILED, msg, now)
            self._failed(endpoint, f"plan {plan.id} failed: {msg}", now)
        else:
            self.store.plans.finish(plan.id, PlanState.APPLIED, _applied(result), now)
            self._ok(endpoint, self.store.plans.marks(endpoint).down_by, now, reset=True)

    def _record_result(self, plan: Plan, result: ApplyResult, known: set[str],
                       now: float) -> None:
        for name in result.created:
            self.store.machines.move(name, M.BOOTING, now=now)  # unless its pilot came up
        for name, msg in result.errors.items():
            if name in plan.create:
                self.store.machines.move(name, M.FAILED, msg, now)
        for name in result.deleted:
            if name in known and M(self.store.machines.get(name)["state"]) in \
                    LIVE_STATES | {M.LOST}:
                self.store.machines.move(name, M.STOPPED, "removed by the driver", now)

    def _specs(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """What the store keeps of machines already recorded (priced endpoints)."""
        out = {}
        for name in names:
            try:
                info = self.store.machines.get(name).get("info")
            except NotFound:
                continue
            if info:
                out[name] = json.loads(info)
        return out

    # endpoint state and back-off ---------------------------------------------------------
    def _failed(self, endpoint: str, message: str, now: float) -> None:
        backoff = self.store.plans.marks(endpoint).backoff.failed(now)
        self.store.plans.set_backoff(endpoint, backoff)
        msg = f"{_one_line(message)} (attempt {backoff.failures}; retry in " \
              f"{backoff.wait(now):.0f}s)"
        log.warning("endpoint %s: %s", endpoint, msg)
        self.store.machines.set_endpoint_state(endpoint, "error", msg, now)
        self.store.plans.endpoint_event(endpoint, "error", msg, now)
        self._shown[endpoint] = ("error", msg)

    def _ok(self, endpoint: str, down_by: str | None, now: float, message: str = "",
            reset: bool = False) -> None:
        if reset or self.store.plans.marks(endpoint).backoff.failures:
            self.store.plans.set_backoff(endpoint, Backoff())
        state = "down" if down_by else "ok"
        if down_by and not message:
            message = f"taken down by {down_by}"
        shown = self._shown.get(endpoint)
        if shown != (state, message):  # write only what changed
            self.store.machines.set_endpoint_state(endpoint, state, message, now)
            if shown is not None and shown[0] == "error":  # a recovery
                self.store.plans.endpoint_event(endpoint, state,
                                                message or "the driver works again", now)
            self._shown[endpoint] = (state, message)


def _one_line(e: object) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " / ".join(lines[:3])[:500] or type(e).__name__


def _applied(result: ApplyResult) -> str:
    parts = []
    if result.created:
        parts.append("created " + ", ".join(result.created))
    if result.deleted:
        parts.append("deleted " + ", ".join(result.deleted))
    return "; ".join(parts) or "nothing to do"


def _seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])
