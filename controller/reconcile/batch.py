"""The batch kind of endpoint: a batch system (Slurm, Grid Engine) reached over SSH, whose
pilots are batch jobs submitted, watched and cancelled on the site's login node
(controller/drivers/batchsite.py running an adapter of controller/drivers/batch.py).

observe: what the batch system last reported of each pilot job (a cache filled by the worker)
as the machines' observed detail. decide (in the tick): the pilot jobs and the machines as
recorded -> domain.batch.decide_batch() (pure) -> record what the batch system said (machines
gone, lost, failed; their jobs back to the queue, as interrupted when the site ended the pilot
job). The slow part runs in the endpoint's worker: submit and cancel pilot jobs, then ask for
their status again (one SSH session, tenths of a second)."""

from __future__ import annotations

from controller.config.settings import BatchEndpointConfig
from controller.domain import ticks
from controller.domain.batch import BatchState, PilotJob, decide_batch
from controller.domain.machines import MachineState, MachineView
from controller.drivers.batch import BatchCommandError
from controller.drivers.batchsite import SYSTEMS, BatchDriver
from controller.errors import DriverError
from controller.reconcile.endpoint import LoopEnv, Outcome, Step, Tick
from controller.reconcile.worker import Worker
from controller.services.secrets import BOOTSTRAP_LIFETIME, bootstrap_token

M = MachineState


class BatchEndpoint:
    def __init__(self, config: BatchEndpointConfig, driver: BatchDriver, env: LoopEnv) -> None:
        self.name = config.name
        self.config = config
        self.driver = driver
        self.env = env
        self.worker = Worker(config.name, config.apply_timeout, env.clock)
        self.hold_until = 0.0  # no new pilot jobs before (one pended too long)

    def lead(self, now: float) -> None:
        pass  # pilot jobs are re-read from the batch system (squeue) each tick

    def observe(self, now: float) -> None:
        seen = self.driver.observe()
        self.env.store.machines.record_observed(
            self.name, {m.name: (m.address, m.detail) for m in seen})

    def _views(self) -> list[tuple[MachineView, dict[str, object]]]:
        store = self.env.store
        busy = store.jobs.busy_by_machine()
        out = []
        for m in store.machines.find(self.name, live=True):
            b = busy.get(m.name, 0)
            out.append((MachineView(
                name=m.name, endpoint=self.name, state=m.state, created_at=m.created_at,
                slots=m.info.get("slots", self.config.slots), busy_slots=b,
                idle_since=None if b else (m.last_busy_at or m.created_at),
                last_seen=max(m.last_seen, self.env.started) if m.last_seen else None,
                managed=m.managed), dict(m.info)))
        return out

    def decide(self, tick: Tick) -> Step:
        store, now, ep, d = self.env.store, tick.now, self.config, self.driver
        snap = d.snapshot
        views = self._views()
        pilots = [PilotJob(v, _str(info.get("batch_job")), _float(info.get("submitted_at")),
                           snap.jobs.get(str(info.get("batch_job"))))
                  for v, info in views]
        down_by = store.endpoints.get(self.name).down_by
        inputs = ticks.BatchTickInputs(ep.batch_spec(), tuple(tick.queues), tuple(pilots), now,
                                       store.endpoints.last_seq(self.name), snap.at,
                                       self.hold_until, down_by)
        bd = decide_batch(inputs.spec, inputs.queues, inputs.pilots, now, inputs.last_seq,
                          seen_at=snap.at, hold_until=self.hold_until, down_by=down_by)
        self.hold_until = bd.hold_until
        decision = bd.decision
        state = {v.name: v.state for v, _ in views}
        requeued = 0
        for rm in decision.remove:
            if not store.machines.move(rm.name, rm.to, rm.reason, now, if_in={state[rm.name]}):
                continue
            if rm.name in bd.interrupted:
                requeued += len(store.jobs.interrupt(rm.name, f"pilot job ended by the site: "
                                                     f"{rm.reason}", now))
            elif rm.to in (M.LOST, M.FAILED):
                requeued += self.env.requeue(rm.name, f"machine {rm.to.value}: {rm.reason}",
                                             now)
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
        return Step(decision, ticks.encode_batch(inputs), ticks.decision_to_dict(decision),
                    requeued=requeued, what="batch commands",
                    work=lambda: self._work(decision.start, cancel, down_by))

    def _work(self, start: tuple[str, ...], cancel: list[str], down_by: str | None) -> Outcome:
        """Submit, cancel, then ask for status; record what happened. A command that fails
        is the endpoint's error, with the batch system's own message."""
        store, d, clock = self.env.store, self.driver, self.env.clock
        errors: list[str] = []
        if start:
            try:
                got = d.submit(start)
            except DriverError as e:
                got = {m: BatchCommandError(str(e)) for m in start}
            now = clock()
            for m, res in got.items():
                if isinstance(res, BatchCommandError):
                    store.machines.move(m, M.FAILED, f"submission failed: {res}", now,
                                        if_in={M.REQUESTED})
                    errors.append(f"{m}: {res}")
                    continue
                store.machines.update_info(m, batch_system=d.system.name, batch_job=res,
                                           submitted_at=now)
                store.machines.move(m, M.BOOTING, f"submitted as {d.system.name} job {res}",
                                    now, if_in={M.REQUESTED})
        if cancel:
            try:
                d.cancel(cancel)
            except DriverError as e:
                errors.append(f"cancel {' '.join(cancel)}: {e}")
        try:
            d.refresh()
        except DriverError as e:
            errors.append(f"status: {e}")
        if errors:
            return Outcome(error="; ".join(errors))
        return Outcome(down_by=down_by)

    def timed_out(self, now: float) -> str:
        return (f"batch commands ran past {self.config.apply_timeout:.0f}s (the login node "
                "does not answer?)")

    def close(self) -> None:
        """Let the commands under way finish (each is bounded by command_timeout), so that
        what they did is recorded, then end the SSH session."""
        assert self.config.batch is not None
        self.worker.wait(self.config.batch.command_timeout)
        self.driver.close()


def _str(x: object) -> str | None:
    return None if x is None else str(x)


def _float(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) else None


def make_batch_endpoint(ep: BatchEndpointConfig, env: LoopEnv) -> BatchEndpoint:
    """A batch endpoint; each pilot job gets a one-time bootstrap token that lives as long as
    the job may pend and boot."""
    assert ep.batch is not None
    s = env.settings
    lifetime = max(BOOTSTRAP_LIFETIME, ep.batch.pending_timeout + ep.boot_timeout + 600)

    def token_for(machine: str) -> str:
        return bootstrap_token(env.store, s.data_dir, ep.name, machine, lifetime=lifetime)

    driver = BatchDriver(ep, s.data_dir, s.url, token_for, SYSTEMS[ep.driver](ep),
                         hide=s.controller_paths())
    return BatchEndpoint(ep, driver, env)
