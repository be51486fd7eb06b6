"""Machines (VMs, hosts or local pilot processes) and their lifecycle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.domain.transitions import check


class MachineState(StrEnum):
    REQUESTED = "requested"
    BOOTING = "booting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    LOST = "lost"
    FAILED = "failed"
    UNREACHABLE = "unreachable"  # an SSH host that does not answer; retried with back-off


M = MachineState
TRANSITIONS: dict[tuple[MachineState, MachineState], str] = {
    (M.REQUESTED, M.BOOTING): "the driver created it",
    (M.REQUESTED, M.FAILED): "the driver could not create it",
    (M.REQUESTED, M.STOPPING): "no longer wanted before the driver created it",
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
    # SSH hosts: a host is one machine that lives on between its pilots, so a stopped machine
    # can be asked for again, and a host that does not answer is unreachable until a retry
    # (with back-off) reaches it.
    (M.STOPPED, M.REQUESTED): "work waits again: start pilots on this host",
    (M.STOPPED, M.UNREACHABLE): "the host does not answer on SSH",
    (M.REQUESTED, M.UNREACHABLE): "the deploy could not reach the host over SSH",
    (M.BOOTING, M.UNREACHABLE): "the host stopped answering on SSH before its pilot came up",
    (M.STOPPING, M.UNREACHABLE): "the stop could not reach the host over SSH",
    (M.STOPPING, M.FAILED): "the stop playbook failed on the host",
    (M.LOST, M.UNREACHABLE): "its pilot went silent and the host does not answer on SSH",
    (M.UNREACHABLE, M.STOPPED): "a retry reached the host again (any leftover pilot stopped)",
    (M.FAILED, M.STOPPED): "a retry reached the host (any leftover pilot stopped)",
}

# The named sets of machine states, in one place (the store's SQL IN lists are made from them).
# live: the driver has the machine, or is making or removing it
LIVE_STATES = frozenset({M.REQUESTED, M.BOOTING, M.RUNNING, M.STOPPING})
# wanted: live and not on its way out; what `cloudpilot down` stops
WANTED_STATES = frozenset({M.REQUESTED, M.BOOTING, M.RUNNING})
# starting: asked for, its pilot not registered yet
STARTING_STATES = frozenset({M.REQUESTED, M.BOOTING})
# deployed: a pilot was started on it (booting) or runs there
DEPLOYED_STATES = frozenset({M.BOOTING, M.RUNNING})
# to retry: an SSH host that went wrong, reached again (with back-off) and cleaned up
RETRY_STATES = frozenset({M.LOST, M.UNREACHABLE, M.FAILED})
# draining: its pilot takes no new work and exits
DRAIN_STATES = frozenset({M.STOPPING, M.STOPPED, M.LOST, M.FAILED})
# revoking: a machine that enters one loses its pilots' credentials at once (issue 26)
REVOKE_STATES = frozenset({M.STOPPED, M.LOST, M.FAILED})


def check_transition(old: MachineState, new: MachineState) -> str:
    return check(TRANSITIONS, "machine", old, new)


def states_into(new: MachineState) -> frozenset[MachineState]:
    """The states from which a machine may move to `new`."""
    return frozenset(old for old, to in TRANSITIONS if to == new)


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
    draining: bool = False  # takes no new jobs; stops when its last job ends
    busy_until: float = 0.0  # when its running jobs should end (predicted; 0: not known)


@dataclass(frozen=True)
class Machine:
    """A machine as the store keeps it. `info` (what it is: a priced machine's pool, type,
    zone, market, price, cores, memory and slots; an SSH host's facts, address and port) is
    parsed here, once."""

    name: str
    endpoint: str
    state: MachineState
    created_at: float
    updated_at: float
    last_busy_at: float | None
    last_seen: float | None
    address: str | None
    reason: str | None
    managed: bool  # started by the controller's driver (False: a pilot that joined)
    observed: str | None = None  # what the driver reports besides its address
    info: Mapping[str, Any] = field(default_factory=dict)
    draining: bool = False  # consolidation: takes no new jobs; stops when its last job ends

    @property
    def price(self) -> float:
        return float(self.info.get("price", 0.0))

    @property
    def spot(self) -> bool:
        return self.info.get("market") == "spot"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Machine:
        return cls(
            name=row["name"], endpoint=row["endpoint"], state=MachineState(row["state"]),
            created_at=row["created_at"], updated_at=row["updated_at"],
            last_busy_at=row["last_busy_at"], last_seen=row["last_seen"],
            address=row["address"], reason=row["reason"], managed=bool(row["managed"]),
            observed=row["observed"], info=json.loads(row["info"]) if row["info"] else {},
            draining=bool(row["draining"]) if "draining" in row.keys() else False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "endpoint": self.endpoint, "state": self.state.value,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "last_busy_at": self.last_busy_at, "last_seen": self.last_seen,
                "address": self.address, "reason": self.reason, "managed": self.managed,
                "observed": self.observed, "info": dict(self.info)}
