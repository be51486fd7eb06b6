"""Does a job fit a slot, and why not. Used by the matcher, the scheduler and the
unmatchable-job report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from controller.domain.jobs import Requirements


@dataclass(frozen=True)
class SlotOffer:
    """What a pilot (or a machine shape an endpoint can start) offers right now."""

    endpoint: str
    cores: int
    memory_mb: int
    tags: frozenset[str] = field(default_factory=frozenset)
    max_runtime: int | None = None  # None: no limit on how long a job may run here
    spot: bool = False  # a spot (interruptible) machine: jobs with spot = false never go here


def why_not(req: Requirements, offer: SlotOffer) -> str | None:
    """None if the job fits the offer, else a sentence saying what is missing."""
    if not req.allows_endpoint(offer.endpoint):
        if offer.endpoint in req.banned_endpoints:
            return f"endpoint {offer.endpoint} is banned by the job"
        return f"endpoint {offer.endpoint} is not in the job's allowed endpoints"
    if req.cores > offer.cores:
        return f"needs {req.cores} cores, {offer.endpoint} offers {offer.cores}"
    if req.memory_mb > offer.memory_mb:
        return f"needs {req.memory_mb} MB, {offer.endpoint} offers {offer.memory_mb} MB"
    missing = req.tags - offer.tags
    if missing:
        return f"needs tags {sorted(missing)}, {offer.endpoint} has {sorted(offer.tags)}"
    if offer.spot and not req.spot:
        return f"the job may not run on spot machines, {offer.endpoint} offers spot"
    if offer.max_runtime is not None and req.max_runtime > offer.max_runtime:
        return (
            f"needs {req.max_runtime}s of run time, {offer.endpoint} allows {offer.max_runtime}s"
        )
    return None


def fits(req: Requirements, offer: SlotOffer) -> bool:
    return why_not(req, offer) is None


def unmatchable_reason(req: Requirements, shapes: Iterable[SlotOffer]) -> str | None:
    """None if some endpoint's machine shape can run the job, else why none can."""
    reasons = []
    for shape in shapes:
        r = why_not(req, shape)
        if r is None:
            return None
        reasons.append(r)
    if not reasons:
        return "no endpoint is configured"
    return "no endpoint can run it: " + "; ".join(reasons)


def jobs_per_machine(req: Requirements, shape: SlotOffer, slots: int) -> int:
    """How many jobs of these requirements one machine of this shape holds at once."""
    by_cores = shape.cores // max(req.cores, 1)
    by_mem = shape.memory_mb // max(req.memory_mb, 1)
    return max(0, min(slots, by_cores, by_mem))
