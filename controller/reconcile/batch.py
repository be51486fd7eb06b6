"""One reconcile step of a batch endpoint (a Slurm cluster over SSH): the pilot jobs as the
batch system last reported them and the machines as recorded -> decide_batch() (pure) ->
record what the batch system says (machines gone, lost, failed; their jobs back to the queue)
-> submit and cancel pilot jobs, then ask for their status again, in the endpoint's worker
thread (SSH: tenths of a second to seconds), never in the loop's thread.

The loop knows this kind only as a driver with a `reconcile(reconciler, endpoint, now)` step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from controller.config.settings import EndpointConfig, Settings
from controller.domain.batch import BatchSpec, BatchState, PilotJob, decide_batch
from controller.domain.machines import MachineState
from controller.domain.plans import PlanDiff
from controller.domain.scheduling import Decision
from controller.drivers.base import ApplyResult, ObservedMachine
from controller.drivers.batch import BatchCommandError
from controller.drivers.batchsite import SYSTEMS, BatchDriver
from controller.errors import DriverError

if TYPE_CHECKING:
    from controller.reconcile.loop import Reconciler

M = MachineState


def batch_spec(ep: EndpointConfig) -> BatchSpec:
    assert ep.slurm is not None
    s = ep.slurm
    return BatchSpec(ep.name, ep.shape(), ep.slots, ep.max_machines, s.max_queued,
                     ep.max_starts_per_cycle, s.pending_timeout, s.pending_backoff,
                     ep.boot_timeout, ep.lost_after)


class BatchEndpoint:
    """A batch endpoint as the loop sees it: a driver (observe, plan, apply) with its own
    reconcile step."""

    def __init__(self, ep: EndpointConfig, driver: BatchDriver) -> None:
        self.name = ep.name
        self.driver = driver
        self.hold_until = 0.0  # no new pilot jobs before (one pended too long)

    def observe(self) -> list[ObservedMachine]:
        return self.driver.observe()

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        return self.driver.plan(current, wanted)

    def apply(self, diff: PlanDiff) -> ApplyResult:
        return self.driver.apply(diff)

    def close(self) -> None:
        self.driver.close()

    def reconcile(self, r: Reconciler, ep: EndpointConfig, now: float) -> tuple[Decision, int]:
        """Decide in the loop's thread (fast, pure); submit, cancel and ask for status in the
        worker. While the worker is busy the last decision stands."""
        d = self.driver
        if d.busy:
            last = r.last.get(ep.name)
            return last or Decision(ep.name, (), (), (), 0.0, ("batch commands under way",)), 0
        store = r.store
        snap = d.snapshot
        rows = {m["name"]: m for m in store.machines.find(ep.name, live=True)}
        pilots = []
        for v in r._views(ep.name, ep.slots):
            info = json.loads(rows[v.name]["info"] or "{}") if v.name in rows else {}
            pilots.append(PilotJob(v, info.get("batch_job"), info.get("submitted_at"),
                                   snap.jobs.get(str(info.get("batch_job")))))
        down_by = store.plans.marks(ep.name).down_by
        bd = decide_batch(batch_spec(ep), r.queue, pilots, now,
                          store.machines.last_seq(ep.name), seen_at=snap.at,
                          hold_until=self.hold_until, down_by=down_by)
        self.hold_until = bd.hold_until
        decision = bd.decision
        requeued = 0
        for rm in decision.remove:
            if not store.machines.move(rm.name, rm.to, rm.reason, now):
                continue
            if rm.name in bd.interrupted:
                requeued += len(store.jobs.interrupt(rm.name, f"pilot job ended by the site: "
                                                     f"{rm.reason}", now))
            elif rm.to in (M.LOST, M.FAILED):
                requeued += r._requeue(rm.name, f"machine {rm.to.value}: {rm.reason}", now)
        why = "; ".join(decision.reasons) or "work waits"
        for name in decision.start:
            store.machines.create(name, ep.name, int(name.rsplit("-", 1)[1]), why, now,
                                  info={"cores": ep.cores, "memory_mb": ep.memory_mb,
                                        "slots": ep.slots})
        ids = {p.machine.name: p.batch_id for p in pilots if p.batch_id}
        cancel = [ids[n] for n in bd.cancel if n in ids]
        mine = set(ids.values())  # jobs of live machines; any other that runs is left over
        cancel += [i for i, j in snap.jobs.items() if j.state != BatchState.ENDED
                   and i not in mine and i not in cancel]
        d.in_background(lambda: self._work(r, ep, decision.start, cancel, down_by))
        return decision, requeued

    def _work(self, r: Reconciler, ep: EndpointConfig, start: tuple[str, ...],
              cancel: list[str], down_by: str | None) -> None:
        """Submit, cancel, then ask for status; record what happened. A command that fails
        is the endpoint's error, with the batch system's own message, and a back-off."""
        store, d = r.store, self.driver
        errors: list[str] = []
        if start:
            try:
                got = d.submit(start)
            except DriverError as e:
                got = {m: BatchCommandError(str(e)) for m in start}
            now = r.clock()
            for m, res in got.items():
                if isinstance(res, BatchCommandError):
                    store.machines.move(m, M.FAILED, f"submission failed: {res}", now)
                    errors.append(f"{m}: {res}")
                    continue
                info = {"cores": ep.cores, "memory_mb": ep.memory_mb, "slots": ep.slots,
                        "batch_system": d.system.name, "batch_job": res, "submitted_at": now}
                store.machines.move(m, M.BOOTING, f"submitted as {d.system.name} job {res}",
                                    now, info=json.dumps(info))
        if cancel:
            try:
                d.cancel(cancel)
            except DriverError as e:
                errors.append(f"cancel {' '.join(cancel)}: {e}")
        try:
            d.refresh()
        except DriverError as e:
            errors.append(f"status: {e}")
        now = r.clock()
        if errors:
            r._failed(ep.name, "; ".join(errors), now)
        else:
            r._ok(ep.name, down_by, now)


def make_batch_endpoint(settings: Settings, ep: EndpointConfig, token: str) -> BatchEndpoint:
    system = SYSTEMS[ep.driver](ep)
    return BatchEndpoint(ep, BatchDriver(ep, settings.data_dir, settings.url, token, system))
