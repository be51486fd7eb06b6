"""What each offer delivers (issue 24): measured boot latency (launch to pilot registered),
the share of launches whose pilot never registered, and interruptions per machine-hour (a
running machine the cloud took: its pilot lost), per endpoint and offer, so that the
decision prices an offer by its money cost plus the expected cost of its delay and failures:
a machine that takes an hour to boot costs the jobs waiting for it an hour, one interrupted
costs its jobs their work so far and a new wait (domain/packing.py).

Pure: the store lists the recent launches (controller/store/views.py), this sums them up;
each tick records the sums, so `cloudpilot replay` decides the same."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

WINDOW = 86400.0  # launches of the last day count
MAX_FAILED_SHARE = 0.9  # beyond, the expected delay is taken as at this share


@dataclass(frozen=True)
class Delivery:
    """One offer's recent launches: how many registered, their mean boot time (seconds), and
    how many never registered (ended by `boot_timeout`); and of its machines that ran, the
    hours they ran and how many of them the cloud interrupted (running -> lost)."""

    pool: str
    registered: int
    boot_mean: float
    never: int
    hours: float = 0.0
    interruptions: int = 0

    @property
    def launches(self) -> int:
        return self.registered + self.never

    def expected_delay(self, boot_timeout: float) -> float:
        """Seconds from a launch here to a working pilot, expected: the mean boot, plus, for
        the launches that never register, `boot_timeout` lost before each new try."""
        p = min(self.never / self.launches, MAX_FAILED_SHARE) if self.launches else 0.0
        boot = self.boot_mean if self.registered else boot_timeout
        return boot + p / (1 - p) * boot_timeout

    @property
    def interruption_rate(self) -> float:
        """Interruptions per machine-hour (none measured: 0; under one machine-hour run,
        the interruptions per one hour, so that one early loss is not an infinite rate)."""
        return self.interruptions / max(self.hours, 1.0) if self.interruptions else 0.0

    def describe(self, boot_timeout: float) -> str:
        text = (f"{self.expected_delay(boot_timeout):.0f}s expected to a pilot (measured: "
                f"boot {self.boot_mean:.0f}s, {self.never} of {self.launches} never "
                "registered")
        if self.interruptions:
            text += (f", {self.interruptions} interrupted in {self.hours:.1f} machine-hours"
                     f" = {self.interruption_rate:.3f}/h")
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Delivery:
        # ticks recorded before interruptions were measured have neither
        return cls(str(d["pool"]), int(d["registered"]), float(d["boot_mean"]),
                   int(d["never"]), float(d.get("hours", 0.0)), int(d.get("interruptions", 0)))


def summarize(launches: Iterable[tuple[str, float | None]],
              runs: Iterable[tuple[str, float, bool]] = ()) -> tuple[Delivery, ...]:
    """Per pool, from (pool, seconds to register; None: never registered) of each launch,
    and (pool, seconds it ran, whether the cloud interrupted it) of each machine that ran."""
    boots: dict[str, list[float]] = {}
    never: dict[str, int] = {}
    hours: dict[str, float] = {}
    lost: dict[str, int] = {}
    for pool, secs in launches:
        if secs is None:
            never[pool] = never.get(pool, 0) + 1
        else:
            boots.setdefault(pool, []).append(secs)
    for pool, secs, interrupted in runs:
        hours[pool] = hours.get(pool, 0.0) + max(secs, 0.0) / 3600
        lost[pool] = lost.get(pool, 0) + int(interrupted)
    out = []
    for pool in sorted(set(boots) | set(never) | set(hours)):
        b = boots.get(pool, [])
        out.append(Delivery(pool, len(b), sum(b) / len(b) if b else 0.0, never.get(pool, 0),
                            hours.get(pool, 0.0), lost.get(pool, 0)))
    return tuple(out)
