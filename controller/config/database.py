"""Which backend a `database` setting names, and how to show it without its password."""

from __future__ import annotations

import re


def is_postgres(database: str) -> bool:
    """A postgresql:// URL (a server several controller processes share), not a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
