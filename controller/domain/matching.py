"""Does a job fit a slot, and why not. Used by the matcher, the scheduler and the
unmatchable-job report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

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
    platform: str | None = None  # e.g. "el9"; a job that lists platforms needs one of them
    # tags a job must ask for to run here (DIRAC's RequiredTag): a GPU machine takes only
    # jobs that ask for a GPU
    required_tags: frozenset[str] = field(default_factory=frozenset)
    # a cloud machine started on demand: jobs with spot_only never go here (issue 24)
    on_demand: bool = False


def machine_offer(shape: SlotOffer, cores: int, memory_mb: int, tags: Iterable[str],
                  spot: bool, on_demand: bool = False) -> SlotOffer:
    """What one registered machine's pilot offers: its own cores, memory and tags, and its
    endpoint's rules (platform, required tags, max run time)."""
    return replace(shape, cores=cores, memory_mb=memory_mb, tags=frozenset(tags), spot=spot,
                   on_demand=on_demand)


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
    if req.platforms and offer.platform not in req.platforms:
        return (f"needs a platform among {sorted(req.platforms)}, {offer.endpoint} is "
                f"{offer.platform or 'of no declared platform'}")
    unasked = offer.required_tags - req.tags
    if unasked:
        return (f"{offer.endpoint} takes only jobs that ask for tags "
                f"{sorted(offer.required_tags)}; the job does not ask for {sorted(unasked)}")
    if offer.spot and not req.spot:
        return f"the job may not run on spot machines, {offer.endpoint} offers spot"
    if offer.on_demand and req.spot_only:
        return f"the job runs on spot machines only, {offer.endpoint} offers on-demand"
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


def waiting_reason(req: Requirements, shapes: Sequence[SlotOffer],
                   machines: Sequence[tuple[str, SlotOffer]]) -> str | None:
    """Why a waiting job waits, or None if it could start on a machine that exists.

    `shapes` are the endpoints' machine shapes (what they can start); `machines` the
    registered machines (name, what it offers in all). A job that fits a shape but none of the
    registered machines says so: it waits for a machine to be started (or for ever, where
    the endpoint starts none)."""
    r = unmatchable_reason(req, shapes)
    if r is not None or not machines:
        return r
    why = []
    for name, offer in machines:
        w = why_not(req, offer)
        if w is None:
            return None
        why.append(f"{name}: {w}")
    fit = sorted({s.endpoint for s in shapes if fits(req, s)})
    shown = "; ".join(why[:5]) + (f"; and {len(why) - 5} more" if len(why) > 5 else "")
    return (f"none of the {len(machines)} registered machines can run it ({shown}); it waits "
            f"for a new machine of endpoint {', '.join(fit)}")


def jobs_per_machine(req: Requirements, shape: SlotOffer, slots: int) -> int:
    """How many jobs of these requirements one machine of this shape holds at once."""
    by_cores = shape.cores // max(req.cores, 1)
    by_mem = shape.memory_mb // max(req.memory_mb, 1)
    return max(0, min(slots, by_cores, by_mem))


def to_wake(waiting: Sequence[SlotOffer | None],
            needs: Iterable[tuple[Requirements, int]]) -> list[int]:
    """Which waiting pilots a submission wakes: for each shape of new job (its requirements,
    how many), that many of the pilots whose offer fits it, those waiting longest first; a
    pilot that cannot take any of them stays asleep; the shapes fewest pilots fit are served
    first. `waiting`: the offers of the waiting pilots, longest waiting first (None: a pilot in
    the middle of a look, its offer not yet said). Those are all woken, and none of them
    counts toward what a shape needs: its look may have read the queues before the new jobs
    were committed (woken, it looks once more), and it may not fit them (counted, it would
    take the place of the pilot that does). The positions of the pilots to wake, in order."""
    looking = {i for i, offer in enumerate(waiting) if offer is None}
    fitting = [(req, n, [i for i, offer in enumerate(waiting)
                         if offer is not None and fits(req, offer)]) for req, n in needs]
    fitting.sort(key=lambda f: len(f[2]))  # the scarcest first: a GPU pilot for the GPU job
    taken: set[int] = set()
    for _, n, pilots in fitting:
        for i in pilots:
            if n <= 0:
                break
            if i not in taken:
                taken.add(i)
                n -= 1
    return sorted(taken | looking)
