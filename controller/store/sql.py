"""Small SQL helpers shared by the store's modules."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from enum import StrEnum
from typing import Protocol


class Transactions(Protocol):
    """What a query module needs of the Store (controller/store/db.py): a write transaction
    and a read, on the one connection."""

    def tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def read(self) -> AbstractContextManager[sqlite3.Connection]: ...


def in_list(states: Iterable[StrEnum]) -> str:
    """An SQL IN list made from a named set of states, e.g. "('booting', 'running')" (the
    values are the enums' own, never user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states)) + ")"
