"""Machines (VMs, hosts or local pilot processes) and their lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.domain.transitions import check


class MachineState(StrEnum):
    REQUESTED = "requested"
    BOOTING = "booting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    LOST = "lost"
    FAILED = "failed"


M = MachineState
TRANSITIONS: dict[tuple[MachineState, MachineState], str] = {
    (M.REQUESTED, M.BOOTING): "the driver created it",
    (M.REQUESTED, M.FAILED): "the driver could not create it",
    (M.BOOTING, M.RUNNING): "its pilot registered",
    (M.BOOTING, M.FAILED): "no pilot registered within the boot timeout",
    (M.BOOTING, M.STOPPING): "no longer wanted before it came up",
    (M.BOOTING, M.STOPPED): "it exited before its pilot registered",
    (M.BOOTING, M.LOST): "the driver no longer reports it",
    (M.RUNNING, M.STOPPING): "idle longer than the endpoint's idle timeout",
    (M.RUNNING, M.STOPPED): "its pilot exited on its own (idle)",
    (M.RUNNING, M.LOST): "its pilot stopped heartbeating or the driver no longer reports it",
    (M.STOPPING, M.STOPPED): "the driver removed it",
    (M.STOPPING, M.LOST): "the driver no longer reports it",
    (M.LOST, M.STOPPED): "cleaned up after being lost",
}

LIVE_STATES = frozenset({M.REQUESTED, M.BOOTING, M.RUNNING, M.STOPPING})


def check_transition(old: MachineState, new: MachineState) -> str:
    return check(TRANSITIONS, "machine", old, new)


@dataclass(frozen=True)
class MachineView:
    """What the scheduler knows of one machine at decision time."""

    name: str
    endpoint: str
    state: MachineState
    created_at: float
    slots: int
    busy_slots: int = 0
    free_cores: int = 0
    free_memory_mb: int = 0
    idle_since: float | None = None  # when its last job ended (or it came up); None = busy
    last_seen: float | None = None  # last heartbeat of its pilot
    managed: bool = True  # started by the controller's driver (False: a pilot that joined)
    pool: str | None = None  # priced endpoints: 'type/zone/market' it was started in
