"""The host-pool kind of endpoint: SSH hosts that exist whether or not they run a pilot.

decide (in the tick): hosts as recorded -> domain.hostpool.decide_hosts() (pure) -> record
what the world said (lost, failed, stopping, requested). The SSH work it asks for runs in the
endpoint's worker (Ansible takes seconds): probe joining hosts, retry failed ones, deploy and
stop pilots through the driver, then record what happened (states, facts, failures, host keys
trusted on first use, every Ansible task's result as a machine event). A host that cannot be
reached has its jobs rescheduled at once. Failures of single hosts are backed off per host;
the endpoint's state says which hosts failed."""

from __future__ import annotations

from controller.config.settings import Settings, SshEndpointConfig
from controller.domain import ticks
from controller.domain.hostpool import (
    Backoff,
    HostDecision,
    HostView,
    Membership,
    decide_hosts,
    take_down,
)
from controller.domain.machines import (
    LIVE_STATES,
    MachineState,
    states_into,
)
from controller.domain.matching import SlotOffer
from controller.domain.plans import PlanDiff
from controller.drivers.ssh import HostTarget, SshDriver, SshResult
from controller.errors import NotFound
from controller.reconcile.endpoint import LoopEnv, Outcome, Step, Tick
from controller.reconcile.worker import Worker
from controller.services.membership import host_pilot_token, revoke_host_token
from controller.store import Store

M = MachineState


class HostPoolEndpoint:
    def __init__(self, config: SshEndpointConfig, driver: SshDriver, env: LoopEnv) -> None:
        self.name = config.name
        self.config = config
        self.driver = driver
        self.env = env
        self.worker = Worker(config.name, config.apply_timeout, env.clock)
        self.backoff = Backoff(config.ssh.retry_after, config.ssh.retry_max)
        self._failing = False  # the last SSH run failed on some host (its state says which)

    def lead(self, now: float) -> None:
        pass  # hosts' membership and runs are re-read from the store and the hosts each tick

    def observe(self, now: float) -> None:
        """The hosts' addresses; whether a pilot runs on one is learned from its heartbeats
        (asking every host over SSH each tick would cost seconds)."""
        seen = self.driver.observe()
        self.env.store.machines.record_observed(
            self.name, {m.name: (m.address, m.detail) for m in seen})

    def decide(self, tick: Tick) -> Step:
        store, now = self.env.store, tick.now
        views, host_of = self._views(now)
        inputs = ticks.HostTickInputs(self.config.spec(), tick.queues, tuple(views), now,
                                      self.backoff)
        hd = decide_hosts(inputs.spec, inputs.queues, inputs.hosts, now, inputs.backoff)
        recorded = {**ticks.decision_to_dict(hd.decision), "probe": list(hd.probe),
                    "retry": list(hd.retry)}
        down_by = store.endpoints.get(self.name).down_by
        if down_by:
            hd = take_down(hd, views, down_by)
        d = hd.decision
        state = {v.name: v.state for v in views if v.state is not None}
        requeued = 0
        for rm in d.remove:
            if store.machines.move(rm.name, rm.to, rm.reason, now, if_in={state[rm.name]}) \
                    and rm.to in (M.LOST, M.FAILED):
                requeued += self.env.requeue(rm.name, f"machine {rm.to.value}: {rm.reason}",
                                             now)
        why = "; ".join(d.reasons) or "work waits"
        for name in d.start:
            store.machines.move(name, M.REQUESTED, why, now, if_in={M.STOPPED})
        stopping = tuple(rm.name for rm in d.remove if rm.to == M.STOPPING)
        step = Step(d, ticks.encode_hosts(inputs), recorded, requeued)
        if hd.probe or hd.retry or d.start or stopping:
            return Step(d, step.inputs, recorded, requeued,
                        work=lambda: self._ssh_work(host_of, hd, stopping, down_by),
                        what="an Ansible run")
        # with nothing to do, the state stands until an SSH run says otherwise (or a down)
        idle = None if self._failing and not down_by else Outcome(down_by=down_by)
        return Step(d, step.inputs, recorded, requeued, outcome=idle)

    def _views(self, now: float) -> tuple[list[HostView], dict[str, str]]:
        """The hosts as decide_hosts() sees them (hosts that left and whose pilot stopped
        have their token revoked and are no longer looked at); hands the driver its
        targets."""
        store, ep = self.env.store, self.config
        machines = {m.name: m for m in store.machines.find(ep.name)}
        busy = store.jobs.busy_by_machine()
        views, targets, host_of = [], [], {}
        for h in store.hosts.find(ep.name):
            m = machines.get(h.machine)
            state = m.state if m else None
            if h.membership == Membership.LEFT and state not in LIVE_STATES:
                if revoke_host_token(store, self.env.settings.data_dir, ep.name, h.machine):
                    store.hosts.note(ep.name, h.name, "token revoked",
                                     "its pilot token was revoked", now)
                continue
            facts = h.facts or {}
            cores, memory = h.cores or facts.get("cores"), h.memory_mb or facts.get("memory_mb")
            slots = h.slots or ep.slots
            shape = (SlotOffer(ep.name, int(cores), int(memory), frozenset(ep.tags),
                               ep.max_runtime) if cores and memory else None)
            b = busy.get(h.machine, 0)
            if state == M.RUNNING and h.failures:
                store.hosts.recovered(ep.name, h.name, now)
            views.append(HostView(
                name=h.machine, membership=h.membership, state=state,
                since=m.updated_at if m else h.updated_at, slots=slots, shape=shape,
                busy_slots=b,
                idle_since=None if b or m is None else (m.last_busy_at or m.updated_at),
                last_seen=max(m.last_seen, self.env.started) if m and m.last_seen else None,
                failures=0 if state == M.RUNNING else h.failures,
                last_failure_at=h.last_failure_at))
            targets.append(HostTarget(h.machine, h.address, h.port, slots, h.cores,
                                      h.memory_mb, leaving=h.membership == Membership.LEFT))
            host_of[h.machine] = h.name
            if h.host_key:
                self.driver.pin(h.host_key)
        self.driver.set_hosts(targets)
        return views, host_of

    # in the worker -----------------------------------------------------------------------
    def _ssh_work(self, host_of: dict[str, str], hd: HostDecision, stopping: tuple[str, ...],
                  down_by: str | None) -> Outcome:
        """Probe joining hosts, retry failed ones, deploy and stop pilots; record what
        happened. Jobs of hosts found unreachable go back to the queue (pilots get them at
        their next poll)."""
        store, driver, clock = self.env.store, self.driver, self.env.clock
        errors: list[str] = []
        if hd.probe:  # joining hosts: answer on SSH -> member (with facts)
            res = driver.probe(hd.probe)
            now = clock()  # an Ansible run takes seconds: record when it ended
            self._record(host_of, res, now)
            errors += self._failed(host_of, res, now, None, None)

        if hd.retry:  # lost, unreachable, failed: reach the host, stop any leftover pilot
            res = driver.stop(hd.retry)
            now = clock()
            self._record(host_of, res, now)
            for name in res.deleted:
                store.machines.move(name, M.STOPPED, "a retry reached the host: no pilot left",
                                    now, if_in=states_into(M.STOPPED))
            errors += self._failed(host_of, res, now, M.UNREACHABLE, None)

        start = hd.decision.start
        if start or stopping:
            res = driver.apply(PlanDiff(self.name, start, stopping))
            now = clock()
            self._record(host_of, res, now)
            for name in res.created:
                store.machines.move(name, M.BOOTING, "pilot deployed and started", now,
                                    if_in={M.REQUESTED})
            for name in res.deleted:
                store.machines.move(name, M.STOPPED, "its pilot was stopped", now,
                                    if_in=states_into(M.STOPPED))
            errors += self._failed(host_of, res, now, M.UNREACHABLE, M.FAILED)
        self._failing = bool(errors)
        if errors:
            return Outcome(error="; ".join(errors)[:2000], back_off=False)
        return Outcome(down_by=down_by)

    def _record(self, host_of: dict[str, str], res: SshResult, now: float) -> None:
        """Every task's result as an event of its machine (or of its host, before it has
        one), host keys accepted on first use, fresh facts."""
        store, endpoint = self.env.store, self.name
        for machine, fp in res.tofu.items():
            store.hosts.note(endpoint, host_of[machine], "host key trusted on first use", fp,
                             now)
        for playbook, t in res.tasks:
            if t.host not in host_of:
                continue
            try:
                store.machines.get(t.host)
                store.machines.note(t.host, t.describe(playbook.removesuffix(".yml")), now)
            except NotFound:  # no machine yet: a joining host
                store.hosts.note(endpoint, host_of[t.host], "ansible",
                                 t.describe(playbook.removesuffix(".yml")), now)
        for machine, facts in res.facts.items():
            if machine in host_of:
                store.hosts.answered(endpoint, host_of[machine], facts, now)

    def _failed(self, host_of: dict[str, str], res: SshResult, now: float,
                unreachable_to: MachineState | None,
                failed_to: MachineState | None) -> list[str]:
        """Record the hosts a run failed on (for their back-off) and move their machines; a
        host that cannot be reached has its jobs rescheduled. Returns the errors."""
        store, errors, requeued = self.env.store, [], 0
        for machine, msg in res.errors.items():
            if machine not in host_of:
                continue
            errors.append(f"{machine}: {msg}")
            store.hosts.failed(self.name, host_of[machine],
                               ("unreachable: " if machine in res.unreachable else "") + msg,
                               now)
            to = unreachable_to if machine in res.unreachable else failed_to
            if to is not None and store.machines.move(machine, to, msg, now,
                                                      if_in=states_into(to)):
                requeued += self.env.requeue(machine, f"its host is {to.value}: {msg}", now)
        if requeued:
            self.env.wake()
        return errors

    def timed_out(self, now: float) -> str:
        return (f"{self.worker.what} took longer than {self.config.apply_timeout:.0f}s; the "
                "endpoint waits for it to end")

    def close(self) -> None:
        self.driver.close()


def make_ssh_driver(settings: Settings, store: Store, ep: SshEndpointConfig) -> SshDriver:
    """The driver of an SSH endpoint, its configured hosts recorded as members-to-be, each
    host with its own pilot token."""
    store.hosts.sync_config(ep.name, [h.model_dump() for h in ep.ssh.hosts])
    return SshDriver(ep, settings.data_dir, settings.url,
                     lambda machine: host_pilot_token(store, settings.data_dir, ep.name, machine),
                     hide=settings.controller_paths())
