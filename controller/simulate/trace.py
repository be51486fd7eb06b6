"""Workload traces: the Standard Workload Format (SWF v2.2), plain or gzip-compressed, and
the controller's own store (its recorded jobs, issue 25's what-if): both as TraceJobs."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from controller.store.accounting import RecordedJob


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


def from_store(jobs: Sequence[RecordedJob], since: float, endpoint: str | None = None
               ) -> tuple[list[TraceJob], int]:
    """The store's recorded jobs (controller.store.accounting.recorded_jobs) as a trace whose
    time 0 is `since`: each job's run time is what its last attempt really ran. Jobs with no
    ended attempt, or whose last attempt ran on another endpoint than `endpoint`, are left
    out (their count is returned too)."""
    out, left_out = [], 0
    for j in jobs:
        if j.run is None or (endpoint is not None and j.endpoint != endpoint):
            left_out += 1
            continue
        r = j.requirements
        out.append(TraceJob(id=j.id, submit=j.submitted - since, run=j.run,
                            cores=max(int(r.get("cores") or 1), 1),
                            requested_time=float(r.get("max_runtime") or -1),
                            memory_mb=int(r.get("memory_mb") or -1), user=j.owner,
                            group=j.group))
    out.sort(key=lambda t: (t.submit, t.id))
    return out, left_out
