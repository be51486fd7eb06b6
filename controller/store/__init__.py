"""Storage: SQLite through sqlite-utils. The only package that writes SQL."""

from controller.store.db import Store

__all__ = ["Store"]
