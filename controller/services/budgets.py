"""Which groups are over their monthly budget now (domain/budgets.py), read from the
accounting at most every budget_check_interval seconds per store: the loop asks at every
tick, the API for a waiting job's reason."""

from __future__ import annotations

import threading
import weakref

from controller.config.settings import Settings
from controller.domain.budgets import Overrun, group_spend, month_start, over_budget
from controller.store import Store, accounting

_cache: weakref.WeakKeyDictionary[Store, tuple[float, float, dict[str, Overrun]]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def overruns(store: Store, settings: Settings, now: float) -> dict[str, Overrun]:
    """The groups over their budget this month (none without group_budgets: nothing read)."""
    if not settings.group_budgets:
        return {}
    start = month_start(now)
    with _lock:
        got = _cache.get(store)
    if got is not None and got[0] == start and now - got[1] < settings.budget_check_interval:
        return got[2]
    ledger = accounting.usage(store, settings.machine_prices(), start, now)
    over = over_budget(group_spend(ledger), settings.group_budgets, now)
    with _lock:
        _cache[store] = (start, now, over)
    return over
