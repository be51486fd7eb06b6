"""Price sources (I/O at the edge): where the scheduler's spot prices come from.

- `file`: the TSV histories of DescribeSpotPriceHistory (plain or .xz), read once as step
  functions (domain.pricing.PriceSeries); only the wanted types and product are kept.
- `aws`: boto3 DescribeSpotPriceHistory, cached and refreshed every `refresh` seconds; a
  failed refresh keeps the last prices and is reported as data (`error`), never raised into
  the loop.

Both answer `prices(now) -> {'type/zone': USD per hour}`."""

from __future__ import annotations

import lzma
import time
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, cast

from controller.domain.pricing import PriceSeries, price_key
from controller.errors import ConfigError


class PriceSource(Protocol):
    error: str | None

    def prices(self, now: float) -> dict[str, float]:
        """The spot price of every known 'type/zone' now."""
        ...


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".gz":
        import gzip

        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _when(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _rows(path: Path, product: str) -> Iterator[tuple[str, str, str, str]]:
    """(type, zone, price, timestamp) of the product's rows, in either file layout:
    6 columns (SPOTINSTANCEPRICE, price, time, type, product, zone) or 5 columns
    (zone id, type, product, price, time)."""
    needle = f"\t{product}\t".encode()
    with _open(path) as f:
        for raw in f:
            if needle not in raw:
                continue  # most rows: another product; skip before splitting
            cols = raw.decode().rstrip("\r\n").split("\t")
            if len(cols) == 6:
                yield cols[3], cols[5], cols[1], cols[2]
            elif len(cols) == 5:
                yield cols[1], cols[0], cols[3], cols[4]


def read_history(path: str | Path, types: Collection[str] | None = None,
                 product: str = "Linux/UNIX",
                 zones: Collection[str] | None = None) -> dict[str, PriceSeries]:
    """The spot price histories in a TSV file, as step functions per 'type/zone'."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"price file {p} does not exist")
    points: dict[str, list[tuple[float, float]]] = {}
    for mtype, zone, price, ts in _rows(p, product):
        if (types is not None and mtype not in types) or (zones is not None
                                                          and zone not in zones):
            continue
        try:
            points.setdefault(price_key(mtype, zone), []).append((_when(ts), float(price)))
        except ValueError:
            continue  # a malformed row: not a price
    return {k: PriceSeries.of(v) for k, v in points.items()}


def window(series: dict[str, PriceSeries]) -> tuple[float, float]:
    """The time span the histories cover together."""
    if not series:
        raise ConfigError("no prices: the file holds none for these machine types")
    return (min(s.times[0] for s in series.values()),
            max(s.times[-1] for s in series.values()))


class FilePriceSource:
    """A recorded history replayed: `now` is mapped onto the file's window (wrapping around),
    starting at the window's start when the source is first asked, or at `start`."""

    def __init__(self, series: dict[str, PriceSeries], start: float | None = None) -> None:
        self.series = series
        self.first, self.last = window(series)
        self.start = start
        self.anchor: float | None = None
        self.error: str | None = None

    def history_time(self, now: float) -> float:
        if self.anchor is None:
            self.anchor = now
        span = max(self.last - self.first, 1.0)
        origin = self.first if self.start is None else self.start
        return self.first + ((origin - self.first) + (now - self.anchor)) % span

    def prices(self, now: float) -> dict[str, float]:
        t = self.history_time(now)
        return {k: s.at(t) for k, s in self.series.items()}


class AwsPriceSource:
    """Current spot prices from EC2 DescribeSpotPriceHistory, cached for `refresh` seconds."""

    def __init__(self, region: str, types: Collection[str], product: str = "Linux/UNIX",
                 endpoint_url: str | None = None, refresh: float = 300.0,
                 client: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.types = sorted(types)
        self.product = product
        self.refresh = refresh
        self.clock = clock
        self.cache: dict[str, float] = {}
        self.fetched_at: float | None = None
        self.error: str | None = None
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ConfigError("the aws price source needs boto3: "
                                  "pip install 'cloudpilot[spot]'") from None
            client = boto3.client("ec2", region_name=region, endpoint_url=endpoint_url)
        self.client = client

    def _matches(self, description: str) -> bool:
        # VPC accounts may see 'Linux/UNIX (Amazon VPC)' for the product 'Linux/UNIX'
        return description in (self.product, f"{self.product} (Amazon VPC)")

    def fetch(self) -> dict[str, float]:
        """One DescribeSpotPriceHistory walk: the newest price per type and zone."""
        newest: dict[str, tuple[float, float]] = {}
        pages = self.client.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=self.types, StartTime=datetime.fromtimestamp(self.clock(), UTC))
        for page in pages:
            for row in page.get("SpotPriceHistory", []):
                if not self._matches(row.get("ProductDescription", "")):
                    continue
                key = price_key(row["InstanceType"], row["AvailabilityZone"])
                at = row["Timestamp"].timestamp()
                if key not in newest or at >= newest[key][0]:
                    newest[key] = (at, float(row["SpotPrice"]))
        return {k: p for k, (_, p) in newest.items()}

    def prices(self, now: float) -> dict[str, float]:
        if self.fetched_at is None or now - self.fetched_at >= self.refresh:
            try:
                self.cache = self.fetch()
                self.error = None
            except Exception as e:  # a cloud error is data: keep the last prices
                self.error = f"spot prices not refreshed: {e}"
            self.fetched_at = now
        return dict(self.cache)


def make_price_source(cfg: Any, types: Collection[str]) -> PriceSource:
    """The price source an endpoint's `[endpoints.prices]` (settings.PriceConfig) asks for."""
    if cfg.source == "file":
        start = _when(cfg.start) if cfg.start else None
        return FilePriceSource(read_history(cfg.path, types, cfg.product), start)
    return AwsPriceSource(cfg.region, types, cfg.product, cfg.endpoint_url, cfg.refresh)
