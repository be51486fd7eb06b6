"""Workload traces in the Standard Workload Format (SWF v2.2), plain or gzip-compressed."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from controller.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: int
    submit: float  # seconds from the trace's start
    run: float  # seconds it ran
    cores: int
    requested_time: float  # seconds (-1: unknown)
    memory_mb: int  # -1: unknown
    user: str
    group: str


def _open(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    return open(path)


def _lines(path: Path) -> Iterator[str]:
    with _open(path) as f:
        yield from f


def read_swf(path: str | Path, limit: int | None = None) -> list[TraceJob]:
    """The jobs of an SWF file in submit order (at most `limit`). Jobs with no run time are
    skipped (they never ran); unknown processors count as one core."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"trace {p} does not exist")
    jobs: list[TraceJob] = []
    try:
        for line in _lines(p):
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            f = line.split()
            if len(f) < 18:
                raise ConfigError(f"{p}: not an SWF job line (18 fields): {line[:80]!r}")
            run = float(f[3])
            if run < 0:
                continue
            procs = int(f[4]) if int(f[4]) > 0 else int(f[7])
            mem_kb = int(f[9]) if int(f[9]) > 0 else int(f[6])
            jobs.append(TraceJob(
                id=int(f[0]), submit=float(f[1]), run=run, cores=max(procs, 1),
                requested_time=float(f[8]), memory_mb=mem_kb // 1024 if mem_kb > 0 else -1,
                user=f[11], group=f[12]))
            if limit is not None and len(jobs) >= limit:
                break
    except (OSError, EOFError, ValueError) as e:
        raise ConfigError(f"{p}: cannot read the trace: {e}") from None
    jobs.sort(key=lambda j: (j.submit, j.id))
    return jobs
