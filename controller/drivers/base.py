"""The interface every endpoint driver implements (local now; SSH and Pulumi later)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from controller.domain.plans import PlanDiff


@dataclass(frozen=True)
class ObservedMachine:
    """A machine as the driver sees it (a process, a host, a cloud instance)."""

    name: str
    alive: bool
    address: str | None = None
    detail: str = ""


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
    - `observe` may lag (clouds are eventually consistent); errors are returned as data
      (ApplyResult.errors), not raised through the loop.
    """

    name: str

    def observe(self) -> list[ObservedMachine]:
        """The machines that exist now, as the driver sees them."""
        ...

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        """The change from the current to the wanted set of named machines."""
        ...

    def apply(self, diff: PlanDiff) -> ApplyResult:
        """Make the change: create the named machines, delete the named machines."""
        ...
