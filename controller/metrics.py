"""Prometheus metrics (`GET /metrics`), through prometheus_client.

Most figures are read from the database at scrape time by a custom collector: the database is
their honest source, and counters derived from it (submissions, matches, plan applies, driver
failures, spend) survive a controller restart. Counts of events are kept incrementally: each
scrape reads only the events recorded since the previous one. The tick duration is measured
in this process (a histogram that starts empty at each start). Every metric is listed in the
README's "Metrics" table."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from threading import Lock
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.config.settings import Settings
from controller.domain import costs
from controller.domain.accounting import Ledger
from controller.store import Store, accounting, views

if TYPE_CHECKING:
    from controller.reconcile.loop import TickResult

log = logging.getLogger("cloudpilot.loop")

disable_created_metrics()  # no `_created` series: the README's table is the whole list

MATCH_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
BOOT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
USAGE_REFRESH = 30.0  # seconds: the accounting counters are read again at most this often
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Buckets:
    """A histogram's cumulative state, fed from the database."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


def _le(b: float) -> str:
    return repr(float(b))


class StoreCollector(Collector):
    """Reads the store at each scrape."""

    def __init__(self, store: Store, settings: Settings,
                 long_polls: Callable[[], int] = lambda: 0) -> None:
        self.store = store
        self.settings = settings
        self.long_polls = long_polls  # match requests waiting in this process now
        self.lock = Lock()  # two scrapes at once must not count the same events twice
        self.job_cursor = 0
        self.transitions: dict[str, int] = {}
        self.match_wait = Buckets(MATCH_BUCKETS)
        self.machine_cursor = 0
        self.boot: dict[str, Buckets] = {}
        self.last_duration = 0.0
        self.ledger: tuple[float, Ledger] | None = None  # (when read, the whole-life ledger)

    def _usage(self, now: float) -> Ledger:
        """The accounting over the controller's whole life, read again at most every
        USAGE_REFRESH seconds (it reads every attempt and machine)."""
        if self.ledger is None or now - self.ledger[0] >= USAGE_REFRESH:
            self.ledger = (now, accounting.usage(self.store, self.settings.machine_prices(),
                                                 0.0, now))
        return self.ledger[1]

    def _catch_up(self) -> None:
        t = views.job_transitions_since(self.store, self.job_cursor)
        for state, n in t.counts.items():
            self.transitions[state] = self.transitions.get(state, 0) + n
        for w in t.match_waits:
            self.match_wait.add(w)
        self.job_cursor = t.last_id
        b = views.machine_boots_since(self.store, self.machine_cursor)
        for endpoint, seconds in b.boots:
            self.boot.setdefault(endpoint, Buckets(BOOT_BUCKETS)).add(seconds)
        self.machine_cursor = b.last_id

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        with self.lock:
            self._catch_up()
            yield from self._jobs()
            yield from self._fleet()
            yield from self._offers_and_spend()
            yield from self._accounting()
            took, self.last_duration = self.last_duration, time.perf_counter() - started
        g = GaugeMetricFamily("cloudpilot_scrape_duration_seconds",
                              "How long the previous scrape of /metrics took to collect")
        g.add_metric([], took)
        yield g

    def _jobs(self) -> Iterable[Metric]:
        by_owner = views.jobs_by_owner_state(self.store)  # one scan of an index for both
        by_state: dict[str, int] = {}
        for _, state, n in by_owner:
            by_state[state] = by_state.get(state, 0) + n
        g = GaugeMetricFamily("cloudpilot_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(by_state.items()):
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily("cloudpilot_jobs_by_owner", "Jobs by owner and state",
                              labels=["owner", "state"])
        for owner, state, n in by_owner:
            g.add_metric([owner, state], n)
        yield g
        g = GaugeMetricFamily("cloudpilot_task_queue_waiting",
                              "Waiting jobs per task queue", labels=["task_queue", "owner"])
        for tq, owner, n in views.waiting_by_task_queue(self.store):
            g.add_metric([str(tq), owner], n)
        yield g
        t = self.transitions
        for name, doc, state in (
            ("cloudpilot_jobs_submitted", "Jobs submitted", "received"),
            ("cloudpilot_matches", "Jobs handed to a pilot", "matched"),
            ("cloudpilot_heartbeats_missed", "Held jobs whose pilot stopped heartbeating "
             "(or whose machine was lost): stalled", "stalled"),
            ("cloudpilot_jobs_rescheduled", "Jobs put back in the queue", "rescheduled"),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], t.get(state, 0))
            yield c
        c = CounterMetricFamily("cloudpilot_jobs_finished", "Jobs that ended, by final state",
                                labels=["state"])
        for state in ("done", "failed", "killed"):
            c.add_metric([state], t.get(state, 0))
        yield c
        h = HistogramMetricFamily("cloudpilot_match_latency_seconds",
                                  "From a job becoming waiting to its match to a pilot")
        h.add_metric([], self.match_wait.cumulative(), self.match_wait.sum)
        yield h

    def _fleet(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("cloudpilot_machines", "Machines by endpoint and state",
                              labels=["endpoint", "state"])
        for endpoint, state, n in views.machines_by_endpoint_state(self.store):
            g.add_metric([endpoint, state], n)
        yield g
        h = HistogramMetricFamily("cloudpilot_machine_boot_seconds",
                                  "From a machine being requested to its pilot registering",
                                  labels=["endpoint"])
        for endpoint, b in sorted(self.boot.items()):
            h.add_metric([endpoint], b.cumulative(), b.sum)
        yield h
        names = [e.name for e in self.settings.endpoints]
        c = CounterMetricFamily("cloudpilot_driver_failures", "Driver calls that failed "
                                "(observe, plan or apply)", labels=["endpoint"])
        fails = views.endpoint_failures(self.store)
        for name in names:
            c.add_metric([name], fails.get(name, 0))
        yield c
        plans = views.plans_by_endpoint_state(self.store)
        c = CounterMetricFamily("cloudpilot_plan_applies", "Plans applied, by outcome",
                                labels=["endpoint", "outcome"])
        g = GaugeMetricFamily("cloudpilot_plans_pending", "Plans waiting for approval",
                              labels=["endpoint"])
        by = {(e, s): n for e, s, n in plans}
        for name in names:
            for outcome in ("applied", "failed"):
                c.add_metric([name, outcome], by.get((name, outcome), 0))
            g.add_metric([name], by.get((name, "pending"), 0))
        yield c
        yield g
        g = GaugeMetricFamily("cloudpilot_drift_detected", "1 when the endpoint's last drift "
                              "check (a refreshing Pulumi preview) found changes made behind "
                              "its stack's back", labels=["endpoint"])
        drift = {e.name: e.drift for e in self.store.endpoints.find()}
        for name in names:
            g.add_metric([name], 1 if drift.get(name) else 0)
        yield g

    def _offers_and_spend(self) -> Iterable[Metric]:
        names = [e.name for e in self.settings.endpoints]
        now = time.time()
        g = GaugeMetricFamily("cloudpilot_offer_blocked_seconds", "Offers (machine type / "
                              "zone / market) a cloud refused for capacity or quota: seconds "
                              "until they are tried again (0: tried again, the refusal kept "
                              "until a launch there succeeds)",
                              labels=["endpoint", "pool", "kind"])
        for endpoint, r in self.store.refusals.find():
            g.add_metric([endpoint, r.pool, r.kind], round(max(r.until - now, 0.0), 3))
        yield g
        lives = views.machine_lives(self.store, self.settings.machine_prices())
        rate, total = costs.spend_rate(lives), costs.spent(lives, now)
        g = GaugeMetricFamily("cloudpilot_spend_rate_usd_per_hour",
                              "What the live machines cost per hour", labels=["endpoint"])
        c = CounterMetricFamily("cloudpilot_spend_usd", "USD spent on machines so far",
                                labels=["endpoint"])
        for name in names:
            g.add_metric([name], round(rate.get(name, 0.0), 6))
            c.add_metric([name], round(total.get(name, 0.0), 6))
        yield g
        yield c
        g = GaugeMetricFamily("cloudpilot_pilots", "Pilots registered now",
                              labels=["endpoint"])
        pilots = views.pilots_by_endpoint(self.store)
        for name in names:
            g.add_metric([name], pilots.get(name, 0))
        yield g
        yield GaugeMetricFamily("cloudpilot_match_long_polls",
                                "Pilots' match requests waiting for work in this process",
                                value=self.long_polls())


    def _accounting(self) -> Iterable[Metric]:
        """Core-seconds and USD per owner, group and endpoint of the attempts that ended, by
        status (failed and interrupted apart from done), and each endpoint's idle USD
        (issue 25)."""
        ledger = self._usage(time.time())
        sums: dict[tuple[str, str, str], tuple[float, float]] = {}
        for (kind, _, name, status), a in ledger.usage.items():
            if status == "running":
                continue  # counted when it ends (under its final status: counters only grow)
            cs, usd = sums.get((kind, name, status), (0.0, 0.0))
            sums[(kind, name, status)] = (cs + a.core_hours * 3600, usd + a.money)
        cores = CounterMetricFamily("cloudpilot_usage_core_seconds", "Core-seconds jobs' "
                                    "attempts held, per owner, group or endpoint and status",
                                    labels=["kind", "name", "status"])
        money = CounterMetricFamily("cloudpilot_usage_usd", "USD of machines' cost charged "
                                    "to jobs' attempts (split by cores), per owner, group or "
                                    "endpoint and status", labels=["kind", "name", "status"])
        for (kind, name, status), (cs, usd) in sorted(sums.items()):
            cores.add_metric([kind, name, status], round(cs, 3))
            money.add_metric([kind, name, status], round(usd, 6))
        yield cores
        yield money
        idle: dict[str, float] = {}
        for (_, endpoint), usd in ledger.idle.items():
            idle[endpoint] = idle.get(endpoint, 0.0) + usd
        c = CounterMetricFamily("cloudpilot_idle_usd", "USD of machines' cost while they "
                                "held no job (charged to the endpoint)", labels=["endpoint"])
        for endpoint, usd in sorted(idle.items()):
            c.add_metric([endpoint], round(usd, 6))
        yield c


class Metrics:
    """The controller's metrics registry: the store collector and the loop's tick timer."""

    def __init__(self, store: Store, settings: Settings,
                 long_polls: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = StoreCollector(store, settings, long_polls)
        self.registry.register(self.collector)
        self.tick_seconds = Histogram(
            "cloudpilot_tick_duration_seconds", "One reconcile tick over every endpoint",
            buckets=TICK_BUCKETS, registry=self.registry)

    def after_tick(self, result: TickResult, seconds: float) -> None:
        """After each reconcile tick: time it, sample the fleet for the dashboard's charts,
        and log each decision that starts or removes machines (one line each)."""
        self.tick_seconds.observe(seconds)
        s = self.collector.settings
        views.record_sample(self.collector.store, time.time(), s.sample_interval,
                            s.sample_retention, s.machine_prices())
        for d in result.decisions:
            if d.start or d.remove:
                log.info("decision: start %s, remove %s (demand %.1f machines): %s",
                         ", ".join(d.start) or "-",
                         ", ".join(f"{r.name} ({r.to.value})" for r in d.remove) or "-",
                         d.demand, "; ".join(d.reasons)[:300] or "-",
                         extra={"endpoint": d.endpoint})
