"""What every endpoint's decision is made of: the endpoint's spec, the controller-wide budget,
the decision itself (machines to start, remove and drain), and the health checks every kind
of endpoint shares. domain/scheduling.py (one machine shape) and domain/packing.py (priced
machine types) both build on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.domain.machines import STARTING_STATES, MachineState, MachineView
from controller.domain.matching import SlotOffer
from controller.domain.pricing import Candidate, Launch, Offer


@dataclass(frozen=True)
class EndpointSpec:
    """The parts of an endpoint's configuration the scheduler needs."""

    name: str
    shape: SlotOffer  # what one machine offers in total
    slots: int = 1  # pilot slots per machine
    max_machines: int = 4
    max_starts_per_cycle: int = 2
    idle_timeout: float = 60.0  # stop a machine idle longer than this
    boot_timeout: float = 300.0  # a machine whose pilot never registers is failed
    lost_after: float = 60.0  # a pilot silent this long is lost
    # price-aware endpoints (see domain/packing.py): the machines it can start; empty = `shape`
    offers: tuple[Offer, ...] = ()
    max_spend_per_hour: float | None = None  # USD; None = no limit
    diversity: float = 0.0  # > 0: prefer pools (type x zone) that hold less of the fleet
    # consolidation (priced endpoints): when the rest of the fleet holds the waiting work,
    # machines using at most `drain_below` of their cores drain (take no new jobs, stop when
    # empty), the emptiest first, at most `drain_budget` of the live machines at once
    drain_below: float = 0.25
    drain_budget: float = 0.0
    # matching (domain/placement.py): hold a machine's cores for a wide job only when its
    # running jobs free them within this many seconds
    reserve_limit: float = 300.0
    # a job goes on a machine already running jobs only if it should end (by its predicted
    # run time) at most this many seconds after them: it does not keep a machine alive,
    # mostly empty, for long after its other jobs (None: no limit)
    extend_limit: float | None = None
    # a job goes on a machine already running jobs only if the cores it would leave idle
    # while it outlives them (the machine's cores but its own x how long it should end after
    # them, predicted) stay within this many core-seconds: on a big machine a narrow job may
    # outlive a wide one by minutes, on a small one by hours (None: no limit)
    strand_limit: float | None = None
    # new machines: the smallest type whose price per used core is within this share of the
    # best (a big machine strands cores as its jobs end at different times)
    size_tolerance: float = 0.05
    # free cores kept, as a share of the live machines' cores, for work that arrives before a
    # new machine could boot (0: start machines only for waiting work)
    headroom: float = 0.0
    # the fallback ladder (issue 24): markets in the order they are tried; a task queue whose
    # oldest job has waited longer than `fallback_after` for the first (spot) may use the next
    # (None: every market at once, the cheapest wins)
    fallback_after: float | None = None
    ladder: tuple[str, ...] = ("spot", "on-demand")
    # what an hour's wait of one core of waiting work costs (USD): an offer whose machines
    # are measured to boot slowly, or never, costs that much more (domain/delivery.py; the
    # settings' default is 0.05; 0: not weighed)
    wait_cost: float = 0.0


@dataclass(frozen=True)
class Budget:
    """What is left of the controller-wide limits for one endpoint this tick."""

    machines: int | None = None
    spend_per_hour: float | None = None


@dataclass(frozen=True)
class Removal:
    name: str
    to: MachineState  # STOPPING (idle), LOST (silent) or FAILED (never came up)
    reason: str


@dataclass(frozen=True)
class Decision:
    endpoint: str
    start: tuple[str, ...]
    remove: tuple[Removal, ...]
    wanted: tuple[str, ...]  # the full set of named machines wanted after this decision
    demand: float  # waiting work, in machines' worth
    reasons: tuple[str, ...] = field(default_factory=tuple)
    launches: tuple[Launch, ...] = ()  # priced endpoints: where each started machine goes
    candidates: tuple[Candidate, ...] = ()  # priced endpoints: every offer, priced, with why
    drain: tuple[str, ...] = ()  # machines that take no new jobs and stop when empty

    @property
    def changes(self) -> bool:
        return bool(self.start or self.remove)

    def drains_differently(self, machines: Sequence[MachineView]) -> bool:
        """Whether the drain set differs from the machines' marks."""
        return set(self.drain) != {m.name for m in machines if m.draining}


def machine_name(endpoint: str, seq: int) -> str:
    return f"{endpoint}-{seq:04d}"


def live_machines(machines: Sequence[MachineView]) -> list[MachineView]:
    return [m for m in machines if m.state in (MachineState.BOOTING, MachineState.RUNNING,
                                               MachineState.REQUESTED)]


def health(name: str, state: MachineState | None, last_seen: float | None,
           starting_since: float | None, now: float, lost_after: float, boot_timeout: float,
           what: str = "") -> Removal | None:
    """The health rule of every endpoint kind: a running machine whose pilot is silent for
    `lost_after` is lost; a machine starting since `starting_since` (the kind says from when:
    asked for, deployed, its batch job running; None: not starting) with no pilot after
    `boot_timeout` has failed. `what` starts the failure's reason."""
    if state == MachineState.RUNNING and last_seen is not None \
            and now - last_seen > lost_after:
        return Removal(name, MachineState.LOST,
                       f"no heartbeat for {now - last_seen:.0f}s (> {lost_after:.0f}s)")
    if starting_since is not None and now - starting_since > boot_timeout:
        return Removal(name, MachineState.FAILED, f"{what}no pilot after "
                       f"{now - starting_since:.0f}s (> {boot_timeout:.0f}s)")
    return None


def check_health(spec: EndpointSpec, live: Sequence[MachineView], now: float) -> list[Removal]:
    """The health rule (`health`) over a cloud endpoint's live machines, starting from when
    each was asked for."""
    removals = []
    for m in live:
        starting = m.created_at if m.state in STARTING_STATES else None
        r = health(m.name, m.state, m.last_seen, starting, now, spec.lost_after,
                   spec.boot_timeout)
        if r is not None:
            removals.append(r)
    return removals
