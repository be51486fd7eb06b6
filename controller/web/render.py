"""Templates, their filters, and the overview's charts (inline SVG drawn on the server)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def when(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.4f}" if 0 < abs(x) < 1 else f"${x:,.2f}"


templates.env.filters.update(when=when, duration=duration, usd=usd)


@dataclass(frozen=True)
class Chart:
    """One line chart: an SVG polyline's points in a WIDTH x HEIGHT box, and its labels."""

    title: str
    points: str
    top: float
    last: float
    start: float
    end: float

    WIDTH = 300
    HEIGHT = 80


def chart(title: str, series: Sequence[tuple[float, float]], start: float,
          end: float) -> Chart:
    """A line of (time, value) from `start` to `end`, scaled to the chart's box."""
    top = max((v for _, v in series), default=0.0) or 1.0
    span = max(end - start, 1.0)
    pts = " ".join(f"{(t - start) / span * Chart.WIDTH:.1f},"
                   f"{Chart.HEIGHT - v / top * (Chart.HEIGHT - 4):.1f}" for t, v in series)
    return Chart(title, pts, top, series[-1][1] if series else 0.0, start, end)


@dataclass(frozen=True)
class Bars:
    """A bar chart of values per day in a WIDTH x HEIGHT box: (day, x, y, width, height,
    value) per bar."""

    title: str
    bars: tuple[tuple[str, float, float, float, float, float], ...]
    top: float

    WIDTH = 300
    HEIGHT = 80


def bars(title: str, values: Sequence[tuple[str, float]]) -> Bars:
    """One bar per (day, value), oldest first, scaled to the chart's box."""
    top = max((v for _, v in values), default=0.0)
    w = Bars.WIDTH / max(len(values), 1)
    out = []
    for i, (day, v) in enumerate(values):
        h = v / (top or 1.0) * (Bars.HEIGHT - 4)
        out.append((day, round(i * w + w * 0.1, 2), round(Bars.HEIGHT - h, 2), round(w * 0.8, 2),
                    round(h, 2), v))
    return Bars(title, tuple(out), top)
