"""Machine offers and prices: what an endpoint can start (type x zone x market) and what it
costs. Pure: price histories come in as data (controller/drivers/prices.py reads them)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

Market = Literal["spot", "on-demand"]


def pool_key(machine_type: str, zone: str, market: str) -> str:
    """The name of one capacity pool: 'c5.large/eu-west-1a/spot'."""
    return f"{machine_type}/{zone}/{market}"


def price_key(machine_type: str, zone: str) -> str:
    """The key of a spot price series: 'c5.large/eu-west-1a'."""
    return f"{machine_type}/{zone}"


@dataclass(frozen=True)
class Offer:
    """One kind of machine an endpoint can start: a machine type in a zone, on spot or
    on demand. Spot machines cost the market price (up to `max_price`); on-demand machines
    cost `on_demand_price`."""

    machine_type: str
    zone: str
    market: Market
    cores: int
    memory_mb: int
    on_demand_price: float  # USD per hour
    max_price: float | None = None  # spot: the most we pay; None = the on-demand price
    slots: int | None = None  # pilot slots per machine; None = one per core

    @cached_property
    def pool(self) -> str:
        return pool_key(self.machine_type, self.zone, self.market)

    @cached_property
    def price_key(self) -> str:
        return price_key(self.machine_type, self.zone)

    @property
    def spot(self) -> bool:
        return self.market == "spot"

    @property
    def bid(self) -> float:
        return self.on_demand_price if self.max_price is None else self.max_price

    @property
    def n_slots(self) -> int:
        return self.slots or self.cores

    def price(self, spot_prices: Mapping[str, float]) -> float | None:
        """What one machine costs per hour now; None if spot and no price is known."""
        if not self.spot:
            return self.on_demand_price
        return spot_prices.get(self.price_key)


@dataclass(frozen=True)
class PriceSeries:
    """A price history as a step function: price[i] holds from times[i] until times[i+1]
    (the last one holds on). Times ascend. Before the first time, the first price holds."""

    times: tuple[float, ...]
    prices: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times or len(self.times) != len(self.prices):
            raise ValueError("a price series needs as many prices as times, at least one")

    def at(self, t: float) -> float:
        i = bisect.bisect_right(self.times, t) - 1
        return self.prices[max(i, 0)]

    def steps(self, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
        """(start, end, price) pieces covering [t0, t1)."""
        if t1 <= t0:
            return
        i = max(bisect.bisect_right(self.times, t0) - 1, 0)
        start = t0
        while start < t1:
            nxt = self.times[i + 1] if i + 1 < len(self.times) else t1
            end = min(max(nxt, start), t1)
            if end > start:
                yield start, end, self.prices[i]
            start = end
            i += 1
            if i >= len(self.times):
                if start < t1:
                    yield start, t1, self.prices[-1]
                return

    def integral(self, t0: float, t1: float) -> float:
        """Price x time over [t0, t1), in price-seconds (divide by 3600 for USD at $/h)."""
        return sum((b - a) * p for a, b, p in self.steps(t0, t1))

    def mean(self, t0: float, t1: float) -> float:
        return self.integral(t0, t1) / (t1 - t0) if t1 > t0 else self.at(t0)

    def above(self, limit: float, t0: float, t1: float) -> list[tuple[float, float]]:
        """The intervals within [t0, t1) where the price is above `limit`."""
        out: list[tuple[float, float]] = []
        for a, b, p in self.steps(t0, t1):
            if p > limit:
                if out and out[-1][1] == a:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
        return out

    def shifted(self, offset: float) -> PriceSeries:
        """The same history with `offset` added to every time."""
        return PriceSeries(tuple(t + offset for t in self.times), self.prices)

    @classmethod
    def of(cls, points: Sequence[tuple[float, float]]) -> PriceSeries:
        """From (time, price) points in any order (of two at the same time, one is kept)."""
        by_time = dict(sorted(points))
        return cls(tuple(by_time), tuple(by_time.values()))


@dataclass(frozen=True)
class Launch:
    """A machine the scheduler starts on a priced endpoint, and why there."""

    name: str
    pool: str
    machine_type: str
    zone: str
    market: Market
    price: float  # USD per hour when started
    cores: int
    memory_mb: int
    slots: int
    reason: str

    def info(self) -> dict[str, object]:
        """What the store keeps with the machine (and a driver needs to start it)."""
        return {"pool": self.pool, "type": self.machine_type, "zone": self.zone,
                "market": self.market, "price": self.price, "cores": self.cores,
                "memory_mb": self.memory_mb, "slots": self.slots}


@dataclass(frozen=True)
class Candidate:
    """One offer as the scheduler saw it this tick (for `cloudpilot explain`)."""

    pool: str
    price: float | None  # USD per hour now; None: no spot price known
    max_price: float
    cores: int
    memory_mb: int
    per_core_hour: float | None
    started: int
    status: str  # why it was or was not used
