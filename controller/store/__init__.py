"""Storage, and the only package that writes SQL: SQLite (the embedded default) or PostgreSQL
(shared by several controller processes), behind one interface: `Store`, whose `tx()` and
`read()` hand out a `Connection` (store/sql.py) and whose errors are the controller's own
(`StorageError` and its kinds), whichever the backend."""

from controller.store.db import Store
from controller.store.sql import Connection, Row

__all__ = ["Connection", "Row", "Store"]
