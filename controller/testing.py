"""Helpers for tests of the reconcile loop (cloudpilot's own, and users' tests of their
configurations): an in-memory machine driver and a settable clock.

    from controller.reconcile.loop import Reconciler
    from controller.testing import Clock, InMemoryDriver

    driver, clock = InMemoryDriver("ep"), Clock()
    loop = Reconciler(settings, store, {"ep": driver}, clock=clock)
    loop.tick()
    loop.wait_idle()  # applies run in the endpoint's worker thread

The driver stands in for a cloud (none runs here): it implements the Driver protocol
(controller/drivers/base.py) with machines that are names in a set, and can be made to fail
or to hang, so the loop's handling of failures, back-off and timeouts can be tested with a
real store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Literal

from controller.domain.plans import PlanDiff
from controller.drivers.base import ApplyResult, ObservedMachine, Refusing, unfenced
from controller.errors import DriverError


class InMemoryDriver:
    """A cloud whose machines are names in `machines`. Every machine reports the address
    10.0.0.<last digit of its name> and the detail "id i-<name>".

    - `fail = "raise"`: the next applies raise DriverError (credentials rejected);
      `fail = "partial"`: they create only the first machine asked for, the others fail.
    - `hold`: while this event is clear, apply waits for it (a driver that hangs); `close()`
      sets it, as the controller does when it stops.
    - `applied`: every diff it was asked to apply, in order.
    - `refusing.pools`: pools ('type/zone/market' -> N) whose launches it refuses as sold
      out, the first N times (0: always), as EC2 does (InsufficientInstanceCapacity).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.machines: set[str] = set()
        self.fail: Literal["raise", "partial"] | None = None
        self.hold: threading.Event | None = None
        self.applied: list[PlanDiff] = []
        self.refusing = Refusing()

    def observe(self) -> list[ObservedMachine]:
        return [ObservedMachine(n, True, f"10.0.0.{n[-1]}", f"id i-{n}")
                for n in sorted(self.machines)]

    def refresh(self) -> None:
        """observe() is always up to date."""

    def plan(self, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        return PlanDiff.between(self.name, current, wanted)

    def apply(self, diff: PlanDiff, fence: Callable[[], None] = unfenced) -> ApplyResult:
        self.applied.append(diff)
        if self.hold is not None:
            self.hold.wait()
        fence()  # one change of every machine at once
        if self.fail == "raise":
            raise DriverError("credentials rejected: AuthFailure")
        errors = {}
        for n in diff.create:
            no = self.refusing.refuses(diff.specs.get(n))
            if no is not None:
                errors[n] = no
        created = [n for n in diff.create if n not in errors]
        if self.fail == "partial":
            errors.update({n: "InsufficientInstanceCapacity" for n in created[1:]})
            created = created[:1]
        self.machines |= set(created)
        self.machines -= set(diff.delete)
        return ApplyResult(tuple(created), tuple(diff.delete), errors)

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()


class Clock:
    """A clock the test moves: `clock.t += 5`."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
