"""A tiny helper for lifecycles written as literal transition tables."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)


class IllegalTransition(ValueError):
    """A lifecycle was asked to make a move its transition table does not allow."""


def check(table: Mapping[tuple[S, S], str], kind: str, old: S, new: S) -> str:
    """Return the table's comment for the edge old -> new, or raise IllegalTransition."""
    try:
        return table[(old, new)]
    except KeyError:
        raise IllegalTransition(f"{kind} cannot go from {old.value} to {new.value}") from None
