"""What machines cost: pure arithmetic on prices (USD per hour) and lifetimes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MachineLife:
    """One machine as billing sees it: its endpoint, hourly price, and when it lived."""

    endpoint: str
    price: float  # USD per hour (0 where nothing is paid: local processes, own hosts)
    started: float
    ended: float | None  # None: still alive

    def cost(self, now: float, since: float | None = None) -> float:
        """USD spent on it up to `now` (only from `since` on, if given)."""
        start = self.started if since is None else max(self.started, since)
        end = now if self.ended is None else min(self.ended, now)
        return self.price * max(end - start, 0.0) / 3600.0


def spend_rate(lives: Iterable[MachineLife]) -> dict[str, float]:
    """USD per hour now, per endpoint: the prices of the machines alive now."""
    out: dict[str, float] = {}
    for m in lives:
        if m.ended is None:
            out[m.endpoint] = out.get(m.endpoint, 0.0) + m.price
    return out


def spent(lives: Iterable[MachineLife], now: float,
          since: float | None = None) -> dict[str, float]:
    """USD spent per endpoint up to `now` (since `since`, if given)."""
    out: dict[str, float] = {}
    for m in lives:
        out[m.endpoint] = out.get(m.endpoint, 0.0) + m.cost(now, since)
    return out
