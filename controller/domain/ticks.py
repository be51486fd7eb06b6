"""A scheduler tick as plain data: its inputs (endpoint spec, task queue snapshot, machines,
spot prices, budget, time) and its decision, so a tick can be stored, explained and replayed
through decide() with the same or another spec. Host-pool (SSH) endpoints' ticks hold their
hosts instead of machines (`kind: hosts`) and replay through decide_hosts(); batch endpoints'
ticks (`kind: batch`) hold their pilot jobs (each machine with its batch job as the batch
system last reported it) and replay through decide_batch(). Pure: JSON-ready dicts in and
out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from controller.domain.batch import BatchJob, BatchSpec, BatchState, PilotJob, decide_batch
from controller.domain.delivery import Delivery
from controller.domain.hostpool import Backoff as HostBackoff
from controller.domain.hostpool import HostView, Membership, decide_hosts
from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer
from controller.domain.pricing import Offer
from controller.domain.refusals import Refusal
from controller.domain.scheduling import Budget, Decision, EndpointSpec, decide
from controller.domain.taskqueues import TaskQueue


@dataclass(frozen=True)
class TickInputs:
    spec: EndpointSpec
    queues: tuple[TaskQueue, ...]
    machines: tuple[MachineView, ...]
    now: float
    last_seq: int
    prices: dict[str, float]
    budget: Budget
    refusals: tuple[Refusal, ...] = ()  # offers the cloud refused lately (issue 24)
    delivery: tuple[Delivery, ...] = ()  # what each offer delivered lately (issue 24)

    def decide(self, spec: EndpointSpec | None = None) -> Decision:
        """The decision for these inputs, with the recorded spec or another one."""
        return decide(spec or self.spec, self.queues, self.machines, self.now, self.last_seq,
                      prices=self.prices, budget=self.budget, refusals=self.refusals,
                      delivery=self.delivery)


@dataclass(frozen=True)
class HostTickInputs:
    """The inputs of a host-pool endpoint's tick."""

    spec: EndpointSpec
    queues: tuple[TaskQueue, ...]
    hosts: tuple[HostView, ...]
    now: float
    backoff: HostBackoff

    def decide(self, spec: EndpointSpec | None = None) -> Decision:
        return decide_hosts(spec or self.spec, self.queues, self.hosts, self.now,
                            self.backoff).decision


@dataclass(frozen=True)
class BatchTickInputs:
    """The inputs of a batch endpoint's tick (domain/batch.py)."""

    spec: BatchSpec
    queues: tuple[TaskQueue, ...]
    pilots: tuple[PilotJob, ...]
    now: float
    last_seq: int
    seen_at: float | None  # when the batch system was last asked
    hold_until: float = 0.0
    down_by: str | None = None

    def decide(self, spec: BatchSpec | None = None) -> Decision:
        return decide_batch(spec or self.spec, self.queues, self.pilots, self.now,
                            self.last_seq, seen_at=self.seen_at, hold_until=self.hold_until,
                            down_by=self.down_by).decision


def _shape_to_dict(shape: SlotOffer) -> dict[str, Any]:
    """A slot shape as JSON (its tag sets as sorted lists)."""
    return {**asdict(shape), "tags": sorted(shape.tags),
            "required_tags": sorted(shape.required_tags)}


def _shape_from(d: Mapping[str, Any]) -> SlotOffer:
    return SlotOffer(**{**d, "tags": frozenset(d.get("tags", ())),
                        "required_tags": frozenset(d.get("required_tags", ()))})


def spec_to_dict(s: EndpointSpec) -> dict[str, Any]:
    return {**asdict(s), "shape": _shape_to_dict(s.shape)}


def spec_from_dict(d: Mapping[str, Any]) -> EndpointSpec:
    return EndpointSpec(**{**d, "shape": _shape_from(d["shape"]),
                           "offers": tuple(Offer(**o) for o in d.get("offers", ())),
                           "ladder": tuple(d.get("ladder", EndpointSpec.ladder))})


def _queues(queues: Sequence[TaskQueue]) -> list[dict[str, Any]]:
    return [{"id": q.id, "owner": q.owner, "group": q.group, "priority": q.priority,
             "waiting": q.waiting, "requirements": q.requirements.to_dict(),
             **({} if q.oldest is None else {"oldest": q.oldest}),
             "predicted_runtime": q.predicted_runtime} for q in queues]


def _queues_from(d: Sequence[Mapping[str, Any]]) -> tuple[TaskQueue, ...]:
    return tuple(TaskQueue(q["id"], Requirements.from_dict(q["requirements"]), q["owner"],
                           q["group"], q["priority"], q["waiting"],
                           q.get("predicted_runtime"),  # (older ticks: none)
                           oldest=q.get("oldest")) for q in d)


def encode_hosts(inputs: HostTickInputs) -> dict[str, Any]:
    """A host-pool tick: the same keys as a cloud tick's (so `explain` reads both), its hosts
    under `machines`."""
    hosts = []
    for h in inputs.hosts:
        d = asdict(h)
        d["state"] = h.state.value if h.state is not None else None
        d["membership"] = h.membership.value
        d["shape"] = None if h.shape is None else _shape_to_dict(h.shape)
        hosts.append(d)
    return {"kind": "hosts", "spec": spec_to_dict(inputs.spec),
            "queues": _queues(inputs.queues), "machines": hosts, "now": inputs.now,
            "last_seq": 0, "prices": {}, "budget": {}, "backoff": asdict(inputs.backoff)}


def _host_from(d: Mapping[str, Any]) -> HostView:
    shape = d.get("shape")
    return HostView(**{
        **d, "state": None if d["state"] is None else MachineState(d["state"]),
        "membership": Membership(d["membership"]),
        "shape": None if shape is None else _shape_from(shape)})


def encode_batch(inputs: BatchTickInputs) -> dict[str, Any]:
    """A batch endpoint's tick: the same keys as a cloud tick's (so `explain` reads both),
    each machine with its pilot job (`batch_id`, `submitted_at`, `batch_job`: what the batch
    system said of it, or None)."""
    pilots = []
    for p in inputs.pilots:
        job = None if p.job is None else {**asdict(p.job), "state": p.job.state.value}
        pilots.append({**asdict(p.machine), "state": p.machine.state.value,
                       "batch_id": p.batch_id, "submitted_at": p.submitted_at,
                       "batch_job": job})
    return {"kind": "batch", "spec": {**asdict(inputs.spec),
                                      "shape": _shape_to_dict(inputs.spec.shape)},
            "queues": _queues(inputs.queues), "machines": pilots, "now": inputs.now,
            "last_seq": inputs.last_seq, "prices": {}, "budget": {},
            "seen_at": inputs.seen_at, "hold_until": inputs.hold_until,
            "down_by": inputs.down_by}


def _pilot_from(d: Mapping[str, Any]) -> PilotJob:
    view = {k: v for k, v in d.items() if k not in ("batch_id", "submitted_at", "batch_job")}
    job = d.get("batch_job")
    return PilotJob(MachineView(**{**view, "state": MachineState(view["state"])}),
                    d.get("batch_id"), d.get("submitted_at"),
                    None if job is None else BatchJob(**{**job,
                                                          "state": BatchState(job["state"])}))


def batch_spec_from_dict(d: Mapping[str, Any]) -> BatchSpec:
    return BatchSpec(**{**d, "shape": _shape_from(d["shape"])})


def encode(inputs: TickInputs) -> dict[str, Any]:
    return {
        "spec": spec_to_dict(inputs.spec),
        "queues": _queues(inputs.queues),
        "machines": [{**asdict(m), "state": m.state.value} for m in inputs.machines],
        "now": inputs.now, "last_seq": inputs.last_seq, "prices": dict(inputs.prices),
        "budget": asdict(inputs.budget),
        "refusals": [r.to_dict() for r in inputs.refusals],
        "delivery": [d.to_dict() for d in inputs.delivery],
    }


def decode(d: Mapping[str, Any]) -> TickInputs | HostTickInputs | BatchTickInputs:
    if d.get("kind") == "batch":
        return BatchTickInputs(batch_spec_from_dict(d["spec"]), _queues_from(d["queues"]),
                               tuple(_pilot_from(p) for p in d["machines"]), d["now"],
                               d["last_seq"], d.get("seen_at"), d.get("hold_until", 0.0),
                               d.get("down_by"))
    if d.get("kind") == "hosts":
        return HostTickInputs(spec_from_dict(d["spec"]), _queues_from(d["queues"]),
                              tuple(_host_from(h) for h in d["machines"]), d["now"],
                              HostBackoff(**d["backoff"]))
    return TickInputs(
        spec=spec_from_dict(d["spec"]),
        queues=_queues_from(d["queues"]),
        machines=tuple(MachineView(**{**m, "state": MachineState(m["state"])})
                       for m in d["machines"]),
        now=d["now"], last_seq=d["last_seq"], prices=dict(d["prices"]),
        budget=Budget(**d.get("budget", {})),
        refusals=tuple(Refusal.from_dict(r) for r in d.get("refusals", ())),
        delivery=tuple(Delivery.from_dict(x) for x in d.get("delivery", ())),
    )


def decision_to_dict(dec: Decision) -> dict[str, Any]:
    return {
        "endpoint": dec.endpoint, "start": list(dec.start), "wanted": list(dec.wanted),
        "remove": [{"name": r.name, "to": r.to.value, "reason": r.reason} for r in dec.remove],
        "demand": round(dec.demand, 3), "reasons": list(dec.reasons),
        "launches": [asdict(x) for x in dec.launches],
        "candidates": [asdict(c) for c in dec.candidates],
        "drain": list(dec.drain),
    }


def _starts(d: Mapping[str, Any]) -> dict[str, int]:
    """Started machines by pool (or by 'machine' on single-shape endpoints)."""
    out: dict[str, int] = {}
    pools = {x["name"]: x["pool"] for x in d.get("launches", [])}
    for name in d["start"]:
        key = pools.get(name, "machine")
        out[key] = out.get(key, 0) + 1
    return out


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What the second decision does differently, one line each (empty: the same)."""
    lines = []
    a, b = _starts(before), _starts(after)
    for pool in sorted(set(a) | set(b)):
        if a.get(pool, 0) != b.get(pool, 0):
            lines.append(f"start {pool}: {a.get(pool, 0)} -> {b.get(pool, 0)}")
    ra = {r["name"]: r for r in before["remove"]}
    rb = {r["name"]: r for r in after["remove"]}
    for name in sorted(set(ra) - set(rb)):
        lines.append(f"keep {name} (was: {ra[name]['to']}, {ra[name]['reason']})")
    for name in sorted(set(rb) - set(ra)):
        lines.append(f"remove {name} -> {rb[name]['to']}: {rb[name]['reason']}")
    for r in sorted(set(after["reasons"]) - set(before["reasons"])):
        lines.append(f"new reason: {r}")
    return lines


def snapshot(spec: EndpointSpec, queues: Sequence[TaskQueue], machines: Sequence[MachineView],
             now: float, last_seq: int, prices: Mapping[str, float] | None,
             budget: Budget | None, refusals: Sequence[Refusal] = (),
             delivery: Sequence[Delivery] = ()) -> TickInputs:
    return TickInputs(spec, tuple(queues), tuple(machines), now, last_seq, dict(prices or {}),
                      budget or Budget(), tuple(refusals), tuple(delivery))
