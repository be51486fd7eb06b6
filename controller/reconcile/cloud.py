"""The cloud kind of endpoint: machines created and deleted by name through a driver (local
pilot processes, Pulumi stacks on AWS or OpenStack), by way of plans.

observe: the driver's machines (a cache, fast); machines it no longer runs are stopped, or
lost with their jobs rescheduled. decide: domain.scheduling.decide() on the queue snapshot,
the live machines, spot prices and the budget left; what the world said (lost, failed) is
recorded at once. The rest runs in the endpoint's worker: the driver diffs current against
wanted into a plan (a Pulumi preview), kept in the store; it is applied at once when the
endpoint's policy allows (auto_apply, or under its threshold, or `cloudpilot up`/`down`), else
when an operator approves it (a later tick applies it). A plan being applied is `applying`;
one a controller restart interrupted is applied again (drivers are idempotent per name)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from typing import Any

from controller.config.settings import PricedEndpointConfig
from controller.domain import delivery, ticks
from controller.domain.endpoints import Endpoint
from controller.domain.machines import (
    WANTED_STATES,
    Machine,
    MachineState,
    MachineView,
)
from controller.domain.plans import Plan, PlanState, auto_approval, down_decision, plan_cost
from controller.domain.refusals import Refusal, classify, describe, refused
from controller.domain.runtime_prediction import predicted_ends
from controller.domain.scheduling import Budget, Decision
from controller.drivers.base import NOT_TRIED, ApplyResult, Driver, ObservedMachine
from controller.drivers.prices import PriceSource
from controller.errors import Conflict, DriverError, Fenced, NotFound
from controller.reconcile import pairing
from controller.reconcile.endpoint import LoopEnv, Outcome, Step, Tick, one_line
from controller.reconcile.worker import Worker
from controller.store import views as views_of_store

log = logging.getLogger("cloudpilot.loop")
M = MachineState
STOPPABLE = frozenset({M.BOOTING, M.RUNNING, M.STOPPING, M.LOST})  # X -> stopped is an edge


class CloudEndpoint:
    def __init__(self, config: PricedEndpointConfig, driver: Driver, env: LoopEnv,
                 prices: PriceSource | None = None) -> None:
        self.name = config.name
        self.config = config
        self.driver = driver
        self.env = env
        self.prices = prices
        self.worker = Worker(config.name, config.apply_timeout, env.clock)
        self._seen: list[ObservedMachine] | None = None  # this tick's observation
        self._requeued = 0  # jobs observe() put back in the queue
        self._applying: int | None = None  # the plan the worker applies
        self._abandoned: set[int] = set()  # plans that ran past their timeout
        self._drift_at: float | None = None  # when the stack's drift was last checked
        self._reread = False  # a new leader: the driver's truth is read again before acting

    def lead(self, now: float) -> None:
        """Plans the last leader was applying when it stopped go back to approved (applied
        again; drivers are idempotent per machine name). A process that led before (and
        lost the lead meanwhile) first reads the driver's truth again (refresh): other
        leaders changed the machines since, and its driver's cache is stale."""
        self.env.store.plans.resume_interrupted(self.name, now)
        self._reread = self._seen is not None

    # observe -----------------------------------------------------------------------------
    def observe(self, now: float) -> None:
        store = self.env.store
        self._seen = None if self._reread else self.driver.observe()
        if self._seen is None:
            return  # nothing known yet: decide() has the worker refresh it
        store.machines.record_observed(
            self.name, {m.name: (m.address, m.detail) for m in self._seen})
        self._requeued = self._gone(self._seen, now)
        pairing.sync(store, self.config, self._seen, now)

    def _gone(self, observed: list[ObservedMachine], now: float) -> int:
        """Machines the driver no longer runs: stopped if idle, lost (jobs rescheduled) if
        not."""
        store = self.env.store
        seen = {m.name: m for m in observed}
        busy = store.jobs.busy_by_machine()
        requeued = 0
        for m in store.machines.find(self.name, live=True):
            if not m.managed:
                continue  # a pilot that joined on its own: heartbeats tell if it is alive
            obs = seen.get(m.name)
            if (obs is not None and obs.alive) or m.state == M.REQUESTED:
                continue  # alive, or not created yet
            if busy.get(m.name):
                if store.machines.move(m.name, M.LOST, "its pilot process is gone", now,
                                       if_in={m.state}):
                    requeued += self.env.requeue(m.name, "machine lost: pilot process gone",
                                                 now, dead=self._reap(m.name))
            else:
                why = None if m.state == M.STOPPING else "its pilot exited on its own"
                store.machines.move(m.name, M.STOPPED, why, now, if_in={m.state})
        return requeued

    def _reap(self, machine: str) -> bool:
        """Have the driver end everything of a lost machine, payloads included, if it can
        (the local driver: the machine's cgroup); True when nothing of it runs any more."""
        reap = getattr(self.driver, "reap", None)
        return bool(reap(machine)) if reap is not None else False

    # decide ------------------------------------------------------------------------------
    def decide(self, tick: Tick) -> Step:
        store, now = self.env.store, tick.now
        if self._seen is None:
            return Step(Decision(self.name, (), (), (), 0.0, ("reading the driver's state",)),
                        work=self._refresh, what="reading the driver's state")
        requeued, self._requeued = self._requeued, 0
        ep = store.endpoints.get(self.name)
        views = self._views(now)
        priced = bool(self.config.machine_types)
        inputs = ticks.snapshot(self.config.spec(), tick.queues, views, now,
                                store.endpoints.last_seq(self.name), self._prices(now),
                                self._budget() if priced else None,
                                store.refusals.of(self.name) if priced else (),
                                self._delivery(now) if priced else ())
        decision = inputs.decide()
        recorded = ticks.decision_to_dict(decision)  # decide()'s own, for replay
        if self.config.machine_types and decision.drains_differently(inputs.machines):
            store.machines.set_draining(self.name, decision.drain)  # consolidation
        if ep.down_by:
            decision = down_decision(decision, inputs.machines, ep.down_by)
        # What the world says (lost, failed) is recorded now; stopping an idle machine is a
        # wish, recorded when a plan that deletes it is applied.
        state = {v.name: v.state for v in views}
        for r in decision.remove:
            if r.to == M.STOPPING:
                continue
            if store.machines.move(r.name, r.to, r.reason, now, if_in={state[r.name]}) \
                    and r.to in (M.LOST, M.FAILED):
                requeued += self.env.requeue(r.name, f"machine {r.to.value}: {r.reason}", now,
                                             dead=self._reap(r.name))
        step = Step(decision, ticks.encode(inputs), recorded, requeued)
        approved = store.plans.open(self.name, PlanState.APPROVED)
        if approved is not None:  # approved by an operator since the last tick
            return dataclasses.replace(step, work=lambda: self._apply(approved),
                                       what=f"applying plan {approved.id}")
        current = [m.name for m in self._seen or ()]
        if set(current) == set(decision.wanted):
            store.plans.withdraw(self.name, "nothing left to change", now)
            if ep.up_by:
                store.endpoints.ask_up(self.name, None)
            if self._drift_due(now):
                self._drift_at = now
                return dataclasses.replace(step, work=self._check_drift,
                                           what="checking the stack for drift")
            return dataclasses.replace(step, outcome=Outcome(down_by=ep.down_by))
        return dataclasses.replace(step, work=lambda: self._plan(current, decision, ep),
                                   what="planning")

    def _delivery(self, now: float) -> tuple[delivery.Delivery, ...]:
        """What each offer delivered over the last day: boots, pilots that never came,
        interruptions per machine-hour (domain/delivery.py)."""
        store, since = self.env.store, now - delivery.WINDOW
        return delivery.summarize(
            views_of_store.machine_deliveries(store, self.name, since),
            views_of_store.machine_runs(store, self.name, since, now))

    def _views(self, now: float) -> list[MachineView]:
        store = self.env.store
        jobs = store.jobs.held_jobs()  # and when each machine should empty, predicted
        busy = Counter(j.machine for j in jobs)
        held = store.jobs.busy_resources_by_machine()
        history = store.runtimes.history([j.queue for j in jobs], [j.owner for j in jobs])
        ends = predicted_ends(jobs, history, now)
        views = []
        for m in store.machines.find(self.name, live=True):
            host = pairing.host_of(self.config, m.name)
            last_seen, last_busy = m.last_seen, m.last_busy_at
            if host is not None:  # a VM in ssh mode: its pilot runs on its joined host
                last_seen = None  # the SSH endpoint watches reachability
                with contextlib.suppress(NotFound):
                    last_busy = store.machines.get(host).last_busy_at
            b = busy.get(host or m.name, 0)
            cores, mem = held.get(host or m.name, (0, 0))
            views.append(MachineView(
                name=m.name, endpoint=self.name, state=m.state, created_at=m.created_at,
                slots=m.info.get("slots", self.config.slots), busy_slots=b,
                free_cores=max(m.info.get("cores", 0) - cores, 0),
                free_memory_mb=max(m.info.get("memory_mb", 0) - mem, 0),
                idle_since=None if b else (last_busy or m.created_at),
                last_seen=max(last_seen, self.env.started) if last_seen else None,
                managed=m.managed, pool=m.info.get("pool"), draining=m.draining,
                busy_until=ends.get(host or m.name, 0.0) if b else 0.0,
            ))
        return views

    def _budget(self) -> Budget:
        """What the controller-wide limits leave for this endpoint: minus the other endpoints'
        live machines and their spend (at the prices they were started at)."""
        s = self.env.settings
        if s.max_spend_per_hour is None and s.max_machines_total is None:
            return Budget()
        others = [m for m in self.env.store.machines.find(live=True) if m.endpoint != self.name]
        spend = sum(m.price for m in others)
        return Budget(
            None if s.max_machines_total is None else s.max_machines_total - len(others),
            None if s.max_spend_per_hour is None else s.max_spend_per_hour - spend)

    def _prices(self, now: float) -> dict[str, float]:
        if self.prices is None:
            return {}
        prices = self.prices.prices(now)
        if self.prices.error:
            log.warning("endpoint %s: %s", self.name, self.prices.error)
        return prices

    def _drift_due(self, now: float) -> bool:
        """A Pulumi stack's drift is checked every drift_check_every seconds, the first time
        that long after the controller started."""
        if getattr(self.driver, "drift", None) is None:
            return False
        if self._drift_at is None:
            self._drift_at = now
        return now - self._drift_at >= self.env.settings.drift_check_every

    # in the worker -----------------------------------------------------------------------
    def _check_drift(self) -> Outcome | None:
        """A refreshing preview that expects no changes (Pulumi stacks): a change is drift,
        kept on the endpoint (metric cloudpilot_drift_detected) and recorded as its event
        when new. The next refresh lets the loop act on it (a machine gone is lost)."""
        store = self.env.store
        try:
            found = self.driver.drift()  # type: ignore[attr-defined]
        except DriverError as e:
            return Outcome(error=f"drift check failed: {one_line(e)}")
        if found != store.endpoints.get(self.name).drift:
            store.endpoints.set_drift(self.name, found)
            store.endpoints.event(self.name, "drift" if found else "ok",
                                  f"drift: {found}" if found else "no drift any more",
                                  self.env.clock())
            if found:
                log.warning("endpoint %s: drift: %s", self.name, found)
        self._seen = None
        with contextlib.suppress(DriverError):
            self.driver.refresh()
        return None

    def _refresh(self) -> Outcome | None:
        try:
            self.driver.refresh()
        except DriverError as e:
            return Outcome(error=f"observe failed: {one_line(e)}")
        self._reread = False
        return None

    def _plan(self, current: list[str], decision: Decision, ep: Endpoint) -> Outcome | None:
        """Have the driver diff current against wanted (a Pulumi preview), keep the plan, and
        apply it when the endpoint's policy (or an operator's up or down) allows."""
        store, now = self.env.store, self.env.clock()
        try:
            diff = self.driver.plan(current, decision.wanted)
        except DriverError as e:
            return Outcome(error=f"plan failed: {one_line(e)}")
        launches = {x.name: x for x in decision.launches}
        if diff.create and (launches or self.config.machine_types):  # each machine's type
            diff = dataclasses.replace(diff, specs={
                **self._specs(diff.create),
                **{n: x.info() for n, x in launches.items() if n in diff.create}})
        if diff.empty:
            store.plans.withdraw(self.name, "nothing left to change", now)
            return Outcome(down_by=ep.down_by)
        policy = self.config.approval_policy()
        if ep.down_by:
            ok, why, asked_by = True, f"{ep.down_by} (cloudpilot down)", ep.down_by
        elif ep.up_by:
            ok, why, asked_by = True, f"{ep.up_by} (cloudpilot up)", "scheduler"
        else:
            (ok, why), asked_by = auto_approval(policy, diff), "scheduler"
        why_each = {r.name: r.reason for r in decision.remove}
        reasons = [*decision.reasons,
                   *(f"{n}: {launches[n].reason}" for n in diff.create if n in launches),
                   *(f"{n}: {why_each.get(n, 'not wanted')}" for n in diff.delete)]
        plan, new = store.plans.propose(diff, reasons, asked_by, plan_cost(policy, diff),
                                        "" if ok else why, now)
        if new:
            log.info("endpoint %s: plan %d: %s", self.name, plan.id,
                     diff.describe().replace("\n", " "))
        if not ok:
            return Outcome(message=f"plan {plan.id} {why} (cloudpilot plan approve {plan.id})",
                           down_by=ep.down_by)
        try:
            with store.tx():
                if ep.up_by:
                    store.endpoints.ask_up(self.name, None)
                plan = store.plans.approve(plan.id, why, now)
        except Conflict as e:  # an operator's `down` superseded it meanwhile
            log.info("endpoint %s: %s", self.name, e)
            return None
        return self._apply(plan)

    def _apply(self, plan: Plan) -> Outcome | None:
        """Apply an approved plan and record what it did to each machine. Machines it creates
        are recorded (requested) before the driver is called, so a pilot that registers at
        once finds its machine; the driver's answer moves them on (booting, or failed with its
        message); a driver that raises has created nothing."""
        store, now = self.env.store, self.env.clock()
        known = {m.name: m for m in store.machines.find(self.name)}
        try:
            with store.tx():
                plan = self._start(plan, known, now)
                store.plans.fence(plan.id, self.env.epoch)  # still the leader's
            self._fence(plan.id)  # and its lock still held, right before the driver call
        except Fenced as e:  # deposed: the new leader applies it (or has)
            log.warning("endpoint %s: the driver is not called: %s", self.name, e)
            return None
        except Conflict as e:  # an operator's `down` superseded it meanwhile
            log.info("endpoint %s: %s", self.name, e)
            return None
        self._applying, self.worker.what = plan.id, f"applying plan {plan.id}"
        try:  # the driver checks the fence again before each machine it changes
            result = self.driver.apply(plan.diff, fence=lambda: self._fence(plan.id))
        except Fenced as e:  # deposed during the call: what it did is the new leader's to see
            log.warning("endpoint %s: the driver's call stopped: %s", self.name, e)
            return None
        except DriverError as e:
            return self._failed(plan, one_line(e), create_failed=True)
        except Exception as e:  # a bug: the plan failed; the traceback goes to the log
            self._failed(plan, f"internal error: {one_line(e)}", create_failed=True)
            raise
        finally:
            self._applying = None
        if plan.id in self._abandoned:
            log.warning("endpoint %s: plan %d ended after its timeout: %s", self.name, plan.id,
                        _applied(result))
            return None
        known_all = set(known) | set(plan.create)
        if result.errors:
            refused = self._refused(plan, result, self.env.clock())
            msg = "; ".join(f"{n}: {m}" for n, m in sorted(result.errors.items()))
            if refused and set(result.errors) <= set(refused) | {
                    n for n, m in result.errors.items() if m.startswith(NOT_TRIED)}:
                # only offers the cloud has none of now: they are blocked, not the endpoint,
                # and a tick at once decides again, for the next cheapest offer
                self._failed(plan, msg, result=result, known=known_all)
                self.worker.then = self.env.tick_soon
                return Outcome(message=f"offers refused, tried elsewhere next: {msg}",
                               down_by=store.endpoints.get(self.name).down_by)
            return self._failed(plan, msg, result=result, known=known_all)
        try:
            with store.tx():  # fenced: only under the epoch the plan was applied under
                store.plans.fence(plan.id, self.env.epoch)
                self._record_result(plan, result, known_all, self.env.clock())
                store.plans.finish(plan.id, PlanState.APPLIED, _applied(result),
                                   self.env.clock())
        except Fenced as e:
            log.warning("endpoint %s: the apply's result is not recorded: %s (%s)", self.name,
                        e, _applied(result))
            return None
        self._refused(plan, result, self.env.clock())  # its offers' refusals forgotten
        return Outcome(down_by=store.endpoints.get(self.name).down_by, reset=True)

    def _fence(self, plan_id: int) -> None:
        """The precondition of every change made for a plan: this process still leads (its
        lock's session is alive, so no other leader can have taken over); Fenced if not."""
        if not self.env.leading():
            raise Fenced(f"plan {plan_id}: this process (epoch {self.env.epoch}) no longer "
                         "leads the reconcile loop")

    def _refused(self, plan: Plan, result: ApplyResult, now: float) -> dict[str, str]:
        """Launches the cloud refused for capacity or quota block their offers for a while
        (domain/refusals.py); a launch that succeeded forgets its offer's refusals. Returns
        the refused machines with what the cloud said."""
        if not self.config.machine_types:
            return {}  # one machine shape: nothing else to try, the endpoint backs off
        store = self.env.store
        pool_of = {n: str((plan.specs.get(n) or {}).get("pool") or "") for n in plan.create}
        before = {r.pool: r for r in store.refusals.of(self.name)}
        out: dict[str, str] = {}
        new: dict[str, Refusal] = {}
        for name, msg in sorted(result.errors.items()):
            pool, kind = pool_of.get(name), classify(msg)
            if not pool or kind == "other":
                continue
            out[name] = msg
            if pool not in new:  # one refusal per offer and apply
                new[pool] = refused(before.get(pool), pool, kind, msg, now,
                                    self.config.refusal_ttl, self.config.refusal_ttl_max)
        ok = {pool_of[n] for n in result.created if pool_of.get(n)} - set(new)
        with store.tx():
            store.refusals.record(self.name, new.values())
            store.refusals.clear(self.name, ok & set(before))
            for r in new.values():
                store.endpoints.event(self.name, "refused", f"{r.pool}: {describe(r, now)}",
                                      now)
        for r in new.values():
            log.info("endpoint %s: offer %s %s", self.name, r.pool, describe(r, now))
        return out

    def _start(self, plan: Plan, known: dict[str, Machine], now: float) -> Plan:
        """Mark the plan applying; record the machines it creates (requested) and those it
        deletes (stopping)."""
        store = self.env.store
        plan = store.plans.start_applying(plan.id, now, epoch=self.env.epoch)
        for name in plan.create:
            if name not in known:
                store.machines.create(name, self.name, _seq(name),
                                      f"{plan.reason_for(name)} (plan {plan.id})", now,
                                      info=dict(plan.specs.get(name) or {}) or None)
        for name in plan.delete:  # else: a leftover the store never knew
            if name in known:
                store.machines.move(name, M.STOPPING, f"{plan.reason_for(name)} (plan {plan.id})",
                                    now, if_in=WANTED_STATES)
        return plan

    def _failed(self, plan: Plan, msg: str, create_failed: bool = False, *,
                result: ApplyResult | None = None,
                known: set[str] | None = None) -> Outcome | None:
        """Record a failed apply (and what it did do, `result`), fenced like a success."""
        if plan.id in self._abandoned:
            return None
        now = self.env.clock()
        try:
            with self.env.store.tx():
                self.env.store.plans.fence(plan.id, self.env.epoch)
                if result is not None:
                    self._record_result(plan, result, known or set(), now)
                if create_failed:
                    for name in plan.create:
                        self.env.store.machines.move(name, M.FAILED,
                                                     f"plan {plan.id} failed: {msg}", now,
                                                     if_in={M.REQUESTED})
                self.env.store.plans.finish(plan.id, PlanState.FAILED, msg, now)
        except Fenced as e:
            log.warning("endpoint %s: the apply's result is not recorded: %s (it failed: %s)",
                        self.name, e, msg)
            return None
        return Outcome(error=f"plan {plan.id} failed: {msg}")

    def _record_result(self, plan: Plan, result: ApplyResult, known: set[str],
                       now: float) -> None:
        machines = self.env.store.machines
        with self.env.store.tx():
            for name in result.created:  # unless its pilot came up already
                machines.move(name, M.BOOTING, now=now, if_in={M.REQUESTED})
            for name, msg in result.errors.items():
                if name in plan.create:
                    machines.move(name, M.FAILED, msg, now, if_in={M.REQUESTED, M.BOOTING})
            for name in result.deleted:
                if name in known:
                    machines.move(name, M.STOPPED, "removed by the driver", now,
                                  if_in=STOPPABLE)

    def _specs(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """What the store keeps of machines already recorded (priced endpoints)."""
        out = {}
        for name in names:
            with contextlib.suppress(NotFound):
                m: Machine = self.env.store.machines.get(name)
                if m.info:
                    out[name] = dict(m.info)
        return out

    # the worker ran too long; shutting down -------------------------------------------------
    def timed_out(self, now: float) -> str:
        msg = f"{self.worker.what} took longer than {self.config.apply_timeout:.0f}s"
        plan_id = self._applying
        if plan_id is not None:
            self._abandoned.add(plan_id)
            store = self.env.store
            with store.tx():
                for name in store.plans.get(plan_id).create:
                    store.machines.move(name, M.FAILED, f"plan {plan_id} timed out", now,
                                        if_in={M.REQUESTED})
                store.plans.finish(plan_id, PlanState.FAILED,
                                   f"timed out after {self.config.apply_timeout:.0f}s; the "
                                   "driver is still busy", now)
        cancel = getattr(self.driver, "cancel", None)  # Pulumi: SIGINT to the engine
        if plan_id is not None and cancel is not None and cancel():
            return msg + "; the update was cancelled through the engine"
        return msg + "; the endpoint waits for the driver to return"

    def close(self) -> None:
        self.driver.close()


def _applied(result: ApplyResult) -> str:
    parts = []
    if result.created:
        parts.append("created " + ", ".join(result.created))
    if result.deleted:
        parts.append("deleted " + ", ".join(result.deleted))
    return "; ".join(parts) or "nothing to do"


def _seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])

