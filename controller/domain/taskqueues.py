"""Task queues: waiting jobs grouped by identical requirements, owner, group and priority
(DIRAC's TaskQueueDB idea), so that matching and the scheduler look at groups, not jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.domain.jobs import Requirements


@dataclass(frozen=True)
class TaskQueue:
    id: int
    requirements: Requirements
    owner: str
    group: str
    priority: int
    waiting: int = 0  # filled in where a count is known (scheduler snapshots)


def fair_share_order(
    queues: Iterable[TaskQueue],
    usage: Mapping[str, int],
    shares: Mapping[str, float],
    by: str = "owner",
) -> list[TaskQueue]:
    """Order task queues for a pilot: the owner (or group) furthest below its share first,
    then the highest priority within it, then the oldest queue.

    `usage` counts slots each owner/group holds now; `shares` weights them (default 1).
    Priority only orders work *within* one owner/group, so a heavy user with high priorities
    cannot starve the others (DIRAC's fair share semantics)."""

    def who(q: TaskQueue) -> str:
        return q.group if by == "group" else q.owner

    def key(q: TaskQueue) -> tuple[float, int, int]:
        w = who(q)
        share = shares.get(w, 1.0) or 1.0
        return (usage.get(w, 0) / share, -q.priority, q.id)

    return sorted(queues, key=key)
