"""The interface every machine driver implements: local processes (drivers/local.py), Pulumi
stacks (drivers/pulumi.py), SSH hosts (drivers/ssh.py), and the in-memory driver the tests
use (controller/testing.py). The endpoint kinds in controller/reconcile/ call them: observe in
the loop's tick, refresh, plan and apply in the endpoint's own worker thread."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.domain.plans import PlanDiff


@dataclass(frozen=True)
class ObservedMachine:
    """A machine as the driver sees it (a process, a host, a cloud instance)."""

    name: str
    alive: bool
    address: str | None = None
    detail: str = ""


# The start of a machine's error when the driver did not get to it because another machine's
# launch failed (a Pulumi update stops at its first error): the machine is neither refused
# nor failed by its own doing (issue 24: its offer is not blocked, the endpoint not backed
# off for it)
NOT_TRIED = "not tried: "


def unfenced() -> None:
    """The fence of a call made outside the reconcile loop (a test, a tool): it always
    passes."""


@dataclass(frozen=True)
class ApplyResult:
    created: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)  # machine name -> message


class Driver(Protocol):
    """What an endpoint driver does. Assumptions callers may rely on:

    - `apply` is asynchronous in effect: a created machine comes up later, and the controller
      learns that it is up when its pilot registers, not from `apply`'s return.
    - Every operation is idempotent per machine name: creating a name that exists, or deleting
      one that is gone, is not an error.
    - `observe` is called in the loop's tick: it must be fast (a cache is fine) and may lag
      (clouds are eventually consistent). Slow calls (`refresh`, `plan`, `apply`) run in the
      endpoint's worker thread, one at a time.
    - Per-machine errors are returned as data (ApplyResult.errors); a driver that cannot work
      at all raises DriverError (the loop records it and backs off). Anything else it raises
      is a bug, logged with its traceback.
    """

    name: str

    def observe(self) -> list[ObservedMachine] | None:
        """The machines that exist, as the driver last saw them; None when it does not know
        (yet, or any more): then `refresh` is called first."""
        ...

    def refresh(self) -> None:
        """Bring what `observe` reports up to date (may be slow: a cloud API call)."""
        ...

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        """The change from the current to the wanted set of named machines."""
        ...

    def apply(self, diff: PlanDiff, fence: Callable[[], None] = unfenced) -> ApplyResult:
        """Make the change: create the named machines, delete the named machines. `fence()`
        is the precondition of every change (issue 26): the driver calls it before each
        machine it creates or deletes, or once before one call that changes them all (a
        Pulumi update), and lets what it raises (Fenced: this process no longer leads the
        loop) end the call."""
        ...

    def close(self) -> None:
        """The controller is stopping: cancel a run in progress, if the driver can."""
        ...


class Refusing:
    """A cloud that says no, for the local and in-memory drivers (tests, demos): launches in
    the pools of `pools` ('type/zone/market' -> N) are refused as sold out, each pool's first N
    times (0: always), with the message EC2 gives."""

    def __init__(self, pools: Mapping[str, int] | None = None) -> None:
        self.pools = dict(pools or {})
        self.refused: dict[str, int] = {}  # pool -> launches refused so far

    def refuses(self, spec: Mapping[str, Any] | None) -> str | None:
        """The error for a launch of a machine of this spec (None: it may start)."""
        pool = str((spec or {}).get("pool") or "")
        if pool not in self.pools:
            return None
        limit, done = self.pools[pool], self.refused.get(pool, 0)
        if limit and done >= limit:
            return None
        self.refused[pool] = done + 1
        return (f"InsufficientInstanceCapacity: there is no {pool} capacity now (refused by "
                "the driver's `refuse` setting)")
