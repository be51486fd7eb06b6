"""One reconcile step of an SSH endpoint (called by controller.reconcile.loop for `ssh` endpoints):
hosts as recorded -> decide_hosts() (pure) -> probe joining hosts, retry failed ones, deploy
and stop pilots through the driver -> record what happened (states, facts, failures, host keys
trusted on first use, every Ansible task's result as a machine event)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.config.settings import EndpointConfig, Settings
from controller.domain.hostpool import (
    Backoff,
    HostDecision,
    HostView,
    Membership,
    decide_hosts,
    take_down,
)
from controller.domain.machines import MachineState
from controller.domain.matching import SlotOffer
from controller.domain.plans import PlanDiff
from controller.domain.scheduling import Decision
from controller.drivers.ssh import HostTarget, SshDriver, SshResult
from controller.errors import NotFound
from controller.services.membership import host_pilot_token, revoke_host_token
from controller.store import Store

if TYPE_CHECKING:
    from controller.reconcile.loop import Reconciler

M = MachineState
LIVE = (M.REQUESTED, M.BOOTING, M.RUNNING, M.STOPPING)


def _views(r: Reconciler, ep: EndpointConfig, driver: SshDriver,
           now: float) -> tuple[list[HostView], dict[str, str]]:
    store = r.store
    machines = {m["name"]: m for m in store.machines.find(ep.name)}
    busy = store.jobs.busy_by_machine()
    views, targets, host_of = [], [], {}
    for h in store.hosts.find(ep.name):
        m = machines.get(h["machine"])
        state = M(m["state"]) if m else None
        if h["membership"] == Membership.LEFT and state not in LIVE:
            if revoke_host_token(store, r.settings.data_dir, ep.name, h["machine"]):
                store.hosts.note(ep.name, h["name"], "token revoked",
                                 "its pilot token was revoked", now)
            continue
        facts = h["facts"] or {}
        cores, memory = h["cores"] or facts.get("cores"), h["memory_mb"] or facts.get("memory_mb")
        slots = h["slots"] or ep.slots
        shape = (SlotOffer(ep.name, int(cores), int(memory), frozenset(ep.tags), ep.max_runtime)
                 if cores and memory else None)
        b = busy.get(h["machine"], 0)
        if state == M.RUNNING and h["failures"]:
            store.hosts.recovered(ep.name, h["name"], now)
        views.append(HostView(
            name=h["machine"], membership=h["membership"], state=state,
            since=m["updated_at"] if m else h["updated_at"], slots=slots, shape=shape,
            busy_slots=b,
            idle_since=None if b or m is None else (m["last_busy_at"] or m["updated_at"]),
            last_seen=max(m["last_seen"], r.started) if m and m["last_seen"] else None,
            failures=0 if state == M.RUNNING else int(h["failures"] or 0),
            last_failure_at=h["last_failure_at"]))
        targets.append(HostTarget(h["machine"], h["address"], h["port"], slots, h["cores"],
                                  h["memory_mb"], leaving=h["membership"] == Membership.LEFT))
        host_of[h["machine"]] = h["name"]
        if h["host_key"]:
            driver.pin(h["host_key"])
    driver.set_hosts(targets)
    return views, host_of


def _record(store: Store, endpoint: str, host_of: dict[str, str], res: SshResult,
            now: float) -> None:
    """Every task's result as an event of its machine (or of its host, before it has one),
    host keys accepted on first use, fresh facts."""
    for machine, fp in res.tofu.items():
        store.hosts.note(endpoint, host_of[machine], "host key trusted on first use", fp, now)
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


def _failed(r: Reconciler, endpoint: str, host_of: dict[str, str], res: SshResult,
            now: float, unreachable_to: MachineState | None,
            failed_to: MachineState | None) -> tuple[list[str], int]:
    """Record the hosts a run failed on (for the back-off) and move their machines; a host
    that cannot be reached has its jobs rescheduled. Returns the errors and the jobs
    requeued."""
    errors, requeued = [], 0
    for machine, msg in res.errors.items():
        if machine not in host_of:
            continue
        errors.append(f"{machine}: {msg}")
        r.store.hosts.failed(endpoint, host_of[machine],
                             ("unreachable: " if machine in res.unreachable else "") + msg, now)
        to = unreachable_to if machine in res.unreachable else failed_to
        if to is not None and r.store.machines.move(machine, to, msg, now):
            requeued += r._requeue(machine, f"its host is {to.value}: {msg}", now)
    return errors, requeued


def reconcile_hosts(r: Reconciler, ep: EndpointConfig, driver: SshDriver,
                    now: float) -> tuple[Decision, int]:
    """Decide in the loop's thread (fast, pure); run the SSH work it asks for (seconds:
    Ansible) in the endpoint's own worker thread, so that a slow or hanging host never holds
    up the loop for the other endpoints. While that run lasts, this endpoint is not decided
    again (its last decision stands)."""
    assert ep.ssh is not None
    if driver.busy:
        last = r.last.get(ep.name)
        return last or Decision(ep.name, (), (), (), 0.0, ("an Ansible run is under way",)), 0
    store = r.store
    views, host_of = _views(r, ep, driver, now)
    hd = decide_hosts(ep.spec(), r.queue, views, now,
                      Backoff(ep.ssh.retry_after, ep.ssh.retry_max))
    down_by = store.plans.marks(ep.name).down_by
    if down_by:
        hd = take_down(hd, views, down_by)
    d = hd.decision
    requeued = 0
    for rm in d.remove:
        store.machines.move(rm.name, rm.to, rm.reason, now)
        if rm.to in (M.LOST, M.FAILED):
            requeued += r._requeue(rm.name, f"machine {rm.to.value}: {rm.reason}", now)
    why = "; ".join(d.reasons) or "work waits"
    for name in d.start:
        store.machines.move(name, M.REQUESTED, why, now)
    stopping = tuple(rm.name for rm in d.remove if rm.to == M.STOPPING)
    if hd.probe or hd.retry or d.start or stopping:
        driver.in_background(lambda: _ssh_work(r, ep, driver, host_of, hd, stopping,
                                               down_by))
    elif down_by:
        store.machines.set_endpoint_state(ep.name, "down", f"taken down by {down_by}", now)
    return d, requeued


def _ssh_work(r: Reconciler, ep: EndpointConfig, driver: SshDriver, host_of: dict[str, str],
              hd: HostDecision, stopping: tuple[str, ...], down_by: str | None) -> None:
    """Probe joining hosts, retry failed ones, deploy and stop pilots; record what happened.
    Jobs of hosts found unreachable go back to the queue (pilots get them at their next
    poll)."""
    store = r.store
    errors: list[str] = []
    if hd.probe:  # joining hosts: answer on SSH -> member (with facts)
        res = driver.probe(hd.probe)
        now = r.clock()  # an Ansible run takes seconds: record when it ended
        _record(store, ep.name, host_of, res, now)
        errors += _failed(r, ep.name, host_of, res, now, None, None)[0]

    if hd.retry:  # lost, unreachable, failed: reach the host, stop any leftover pilot
        res = driver.stop(hd.retry)
        now = r.clock()
        _record(store, ep.name, host_of, res, now)
        for name in res.deleted:
            store.machines.move(name, M.STOPPED, "a retry reached the host: no pilot left", now)
        errors += _failed(r, ep.name, host_of, res, now, M.UNREACHABLE, None)[0]

    start = hd.decision.start
    if start or stopping:
        res = driver.apply(PlanDiff(ep.name, start, stopping))
        now = r.clock()
        _record(store, ep.name, host_of, res, now)
        for name in res.created:
            store.machines.move(name, M.BOOTING, "pilot deployed and started", now)
        for name in res.deleted:
            store.machines.move(name, M.STOPPED, "its pilot was stopped", now)
        errors += _failed(r, ep.name, host_of, res, now, M.UNREACHABLE, M.FAILED)[0]

    if errors:
        store.machines.set_endpoint_state(ep.name, "error", "; ".join(errors)[:2000], r.clock())
    elif down_by:
        store.machines.set_endpoint_state(ep.name, "down", f"taken down by {down_by}", r.clock())
    else:
        store.machines.set_endpoint_state(ep.name, "ok", "", r.clock())


def make_ssh_driver(settings: Settings, store: Store, ep: EndpointConfig) -> SshDriver:
    """The driver of an SSH endpoint, its configured hosts recorded as members-to-be, each
    host with its own pilot token."""
    assert ep.ssh is not None
    store.hosts.sync_config(ep.name, [h.model_dump() for h in ep.ssh.hosts])
    return SshDriver(ep, settings.data_dir, settings.url,
                     lambda machine: host_pilot_token(store, settings.data_dir, ep.name, machine),
                     hide=settings.controller_paths())
