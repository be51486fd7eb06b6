"""When the cloud says no (issue 24): a launch a cloud refused for capacity or quota blocks
that offer, and only that offer, for a while.

An offer is (endpoint, machine type, zone, market); within one endpoint its name is the pool
key ('c5.large/eu-west-1a/spot'). A refusal blocks its offer for `ttl` seconds (default 3 min),
doubling while the offer keeps being refused (up to `max_ttl`), forgotten when a launch there
succeeds. The decision (domain/packing.py) does not consider a blocked offer: the next
cheapest one is chosen, so one sold-out pool does not stall the endpoint. Errors that are not
about capacity or quota (credentials, a bad image) back the whole endpoint off, as before.

Pure: the reconcile loop reads the refusals from the store and passes them in with the time;
each tick records them, so `cloudpilot replay` decides the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["capacity", "quota", "other"]

DEFAULT_TTL = 180.0
DEFAULT_MAX_TTL = 3600.0

# What clouds say when they cannot start a machine of one offer now. EC2's error codes
# (InsufficientInstanceCapacity, SpotMaxPriceTooLow...), OpenStack Nova's messages ("No valid
# host was found", "Quota exceeded for cores"), and the equivalents of GCP and Azure.
_CAPACITY = re.compile(
    r"InsufficientInstanceCapacity|InsufficientHostCapacity|InsufficientCapacity|"
    r"InsufficientReservedInstanceCapacity|InsufficientFreeAddressesInSubnet|"
    r"SpotMaxPriceTooLow|capacity-not-available|Unsupported(?:Operation)?: .*"
    r"(?:instance type|availability zone)|"
    r"No ?valid ?host|not enough hosts available|NoValidHost|"
    r"ZONE_RESOURCE_POOL_EXHAUSTED|ZonalAllocationFailed|AllocationFailed|"
    r"SkuNotAvailable|OverconstrainedAllocationRequest",
    re.IGNORECASE)
_QUOTA = re.compile(
    r"InstanceLimitExceeded|MaxSpotInstanceCountExceeded|VcpuLimitExceeded|"
    r"MaxSpotFleetRequestCountExceeded|"
    r"Quota ?exceeded|QuotaExceeded|OverQuota|over ?quota|QUOTA_EXCEEDED|"
    r"exceeds? (?:the )?(?:allowed )?quota|"
    r"OperationNotAllowed: .*quota",
    re.IGNORECASE)


def classify(message: str) -> Kind:
    """What a driver's error about one machine means: `capacity` (the cloud has none of that
    offer now: sold out, no valid host, spot price above our max), `quota` (the account may
    not start more of it), or `other` (credentials, a bad image, a bug)."""
    if _QUOTA.search(message):
        return "quota"
    if _CAPACITY.search(message):
        return "capacity"
    return "other"


@dataclass(frozen=True)
class Refusal:
    """What is remembered of one offer's refusals: the last one's kind and message, how many
    in a row (`failures`), since when, and until when the offer is blocked."""

    pool: str
    kind: str
    message: str
    failures: int
    since: float  # the first refusal of this run
    until: float  # the offer is not considered before this

    def blocks(self, now: float) -> bool:
        return now < self.until

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Refusal:
        return cls(str(d["pool"]), str(d["kind"]), str(d["message"]), int(d["failures"]),
                   float(d["since"]), float(d["until"]))


def refused(prev: Refusal | None, pool: str, kind: Kind, message: str, now: float,
            ttl: float = DEFAULT_TTL, max_ttl: float = DEFAULT_MAX_TTL) -> Refusal:
    """The offer was refused now: blocked for `ttl`, doubled for every refusal in a row
    before it (a success forgets them), at most `max_ttl`."""
    failures = (prev.failures if prev is not None else 0) + 1
    block = min(ttl * 2 ** (failures - 1), max_ttl)
    since = prev.since if prev is not None else now
    return Refusal(pool, kind, message[:300], failures, since, now + block)


def blocking(refusals: Iterable[Refusal], now: float) -> dict[str, Refusal]:
    """The refusals that block their offer now, by pool."""
    return {r.pool: r for r in refusals if r.blocks(now)}


def describe(r: Refusal, now: float) -> str:
    """One line for explain and the candidates' status."""
    times = "once" if r.failures == 1 else f"{r.failures} times in a row"
    return (f"refused ({r.kind}) {times}, blocked for {max(r.until - now, 0):.0f}s more: "
            f"{r.message}")
