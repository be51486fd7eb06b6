"""Task queues: waiting jobs grouped by identical requirements, owner, group and priority
(DIRAC's TaskQueueDB idea), so that matching and the scheduler look at groups, not jobs; and
fair share: which owner's (or group's) work goes first."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby

from controller.domain.jobs import Requirements

OWNER, GROUP = "owner", "group"


@dataclass(frozen=True)
class TaskQueue:
    id: int
    requirements: Requirements
    owner: str
    group: str
    priority: int
    waiting: int = 0  # filled in where a count is known (scheduler snapshots)
    # the predicted run time of its next job (domain/runtime_prediction.py), where one is
    # known; None: its max_runtime
    predicted_runtime: float | None = None
    # when its longest-waiting job became waiting (scheduler snapshots; None: not known):
    # the fallback ladder's deadline counts from it (domain/packing.py)
    oldest: float | None = None

    @property
    def runtime(self) -> float:
        """How long its next job should run: the prediction, else its max_runtime."""
        if self.predicted_runtime is None:
            return float(self.requirements.max_runtime)
        return self.predicted_runtime


def decay(value: float, since: float, now: float, half_life: float) -> float:
    """`value` core-seconds recorded at `since`, as they count at `now`."""
    if now <= since:
        return value
    return value * 0.5 ** ((now - since) / half_life)


@dataclass
class UsageLedger:
    """Used core-seconds per (kind, name), decayed with a half-life (as HTCondor's and
    Slurm's fair share do): the in-memory form of the store's `usage` table."""

    half_life: float = 86400.0
    rows: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def charge(self, kind: str, name: str, core_seconds: float, now: float) -> None:
        value, at = self.rows.get((kind, name), (0.0, now))
        self.rows[(kind, name)] = (decay(value, at, now, self.half_life) + core_seconds, now)

    def at(self, now: float) -> Mapping[tuple[str, str], float]:
        """The decayed values at `now`, each worked out when it is looked up."""
        return _LedgerView(self, now)


class _LedgerView(Mapping[tuple[str, str], float]):
    def __init__(self, ledger: UsageLedger, now: float) -> None:
        self.ledger, self.now = ledger, now

    def __getitem__(self, key: tuple[str, str]) -> float:
        value, at = self.ledger.rows[key]
        return decay(value, at, self.now, self.ledger.half_life)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.ledger.rows)

    def __len__(self) -> int:
        return len(self.ledger.rows)


@dataclass(frozen=True)
class FairShare:
    """Everything fair share weighs at one instant.

    An owner's (or group's) load is what it used recently plus what it holds now, per unit of
    share: (decayed core-seconds / half-life + cores held now) / share. Both terms are in
    cores: the first is roughly the cores it kept busy over the last half-life. So an owner
    whose jobs just ended still counts as having used the machine, and with one-slot pilots
    that finish each job before asking again the owners take turns.

    by = "owner": owners against each other. by = "group": two levels, groups by their share
    first, then the owners within the group by theirs."""

    by: str = OWNER
    half_life: float = 86400.0
    shares: Mapping[str, float] = field(default_factory=dict)  # owner -> share (default 1)
    group_shares: Mapping[str, float] = field(default_factory=dict)  # group -> share
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)  # decayed core-s
    held: Mapping[tuple[str, str], float] = field(default_factory=dict)  # cores held now
    _loads: dict[tuple[str, str], float] = field(default_factory=dict, compare=False,
                                                 repr=False)

    def load(self, kind: str, name: str) -> float:
        key = (kind, name)
        load = self._loads.get(key)
        if load is None:
            shares = self.group_shares if kind == GROUP else self.shares
            share = shares.get(name, 1.0) or 1.0
            used = self.usage.get(key, 0.0) / self.half_life
            load = self._loads[key] = (used + self.held.get(key, 0.0)) / share
        return load

    def key(self, q: TaskQueue) -> tuple[float, float, int, int]:
        """The sort key of a task queue: lowest load first, then the highest priority (which
        orders only one owner's own work), then the oldest queue."""
        owner = self.load(OWNER, q.owner)
        group = self.load(GROUP, q.group) if self.by == GROUP else 0.0
        return (group, owner, -q.priority, q.id)


def holding(fs: FairShare, owner: str, group: str, cores: float) -> FairShare:
    """The standing once `owner` (of `group`) holds `cores` more: a claim's effect on the
    next pick of the same match, worked out without reading the store again."""
    held = dict(fs.held)
    for key in ((OWNER, owner), (GROUP, group)):
        held[key] = held.get(key, 0.0) + cores
    return replace(fs, held=held, _loads={})


def fair_share_order(queues: Iterable[TaskQueue], fs: FairShare) -> list[TaskQueue]:
    """Order task queues for a pilot: the owner (or group, then owner) with the lowest load
    first, then the highest priority within it, then the oldest queue (DIRAC's fair share
    semantics: a heavy user with high priorities cannot starve the others)."""
    return list(fair_share_walk(by_owner(queues), fs))


Owners = Mapping[tuple[str, str], Sequence[TaskQueue]]  # (owner, group) -> its queues


def by_owner(queues: Iterable[TaskQueue]) -> dict[tuple[str, str], list[TaskQueue]]:
    """Task queues by (owner, group), each owner's in the order fair share takes them: the
    highest priority first, then the oldest."""
    out: dict[tuple[str, str], list[TaskQueue]] = {}
    for q in queues:
        out.setdefault((q.owner, q.group), []).append(q)
    for qs in out.values():
        qs.sort(key=_within_owner)
    return out


def _within_owner(q: TaskQueue) -> tuple[int, int]:
    return (-q.priority, q.id)


def fair_share_walk(owners: Owners, fs: FairShare) -> Iterator[TaskQueue]:
    """fair_share_order of the queues grouped by by_owner, made lazily: only the owners are
    sorted (a handful), never all the queues, and the walk goes only as far as its caller.
    Owners with equal loads have their queues merged by priority, then age."""
    def key(who: tuple[str, str]) -> tuple[float, float]:
        owner, group = who
        return (fs.load(GROUP, group) if fs.by == GROUP else 0.0, fs.load(OWNER, owner))

    for _, tied in groupby(sorted(owners, key=key), key=key):
        yield from heapq.merge(*(owners[w] for w in tied), key=_within_owner)


@dataclass(frozen=True)
class Standing:
    """One owner's or group's place in fair share (`cloudpilot shares`)."""

    kind: str  # "owner" or "group"
    name: str
    group: str  # an owner's group ("" for a group)
    share: float
    usage: float  # used core-seconds, decayed to now
    held: float  # cores held now
    load: float  # (usage / half-life + held) / share: the lowest goes first
    rank: int  # 1 = next in line (owners: within their group when fair share is by group)


def standings(fs: FairShare, groups_of: Mapping[str, str]) -> list[Standing]:
    """Every group and owner that has a share, used or holds anything, ranked as the
    matcher ranks them: groups first (by group), owners within their group."""
    owners = set(groups_of) | {n for k, n in [*fs.usage, *fs.held] if k == OWNER}
    groups = set(groups_of.values()) | set(fs.group_shares) | {
        n for k, n in [*fs.usage, *fs.held] if k == GROUP}

    def one(kind: str, name: str, group: str) -> Standing:
        shares = fs.group_shares if kind == GROUP else fs.shares
        return Standing(kind, name, group, shares.get(name, 1.0) or 1.0,
                        fs.usage.get((kind, name), 0.0), fs.held.get((kind, name), 0.0),
                        fs.load(kind, name), 0)

    out = []
    gs = sorted((one(GROUP, g, "") for g in groups), key=lambda s: (s.load, s.name))
    out += [replace(s, rank=i + 1) for i, s in enumerate(gs)]
    os_ = [one(OWNER, o, groups_of.get(o, "")) for o in owners]
    pools: dict[str, list[Standing]] = {}
    for s in os_:
        pools.setdefault(s.group if fs.by == GROUP else "", []).append(s)
    for pool in pools.values():
        pool.sort(key=lambda s: (s.load, s.name))
        out += [replace(s, rank=i + 1) for i, s in enumerate(pool)]
    return out
