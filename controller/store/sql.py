"""Small SQL helpers shared by the store's modules."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


def in_list(states: Iterable[StrEnum]) -> str:
    """An SQL IN list made from a named set of states, e.g. "('booting', 'running')" (the
    values are the enums' own, never user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states)) + ")"
