"""The change a driver makes to an endpoint: from the current set of named machines to the
wanted one. Scale-down names the exact machines to remove; it never just lowers a count."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PlanDiff:
    endpoint: str
    create: tuple[str, ...]
    delete: tuple[str, ...]
    # priced endpoints: what each machine to create is (type, zone, market, cores, memory)
    specs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def empty(self) -> bool:
        return not (self.create or self.delete)

    @classmethod
    def between(cls, endpoint: str, current: Iterable[str], wanted: Iterable[str]) -> PlanDiff:
        cur, want = set(current), set(wanted)
        return cls(endpoint, tuple(sorted(want - cur)), tuple(sorted(cur - want)))

    def describe(self) -> str:
        parts = [f"+ {n}" for n in self.create] + [f"- {n}" for n in self.delete]
        return "\n".join(parts) if parts else "(no change)"
