"""Prometheus metrics (optional: ``pip install "celery-durable[prometheus]"``).

Two halves, enabled separately because they belong in different processes:

- **event counters** (:func:`enable`), fed by :mod:`celery_durable.signals` in the
  processes that execute runs (the Celery workers): runs started, resumed, completed,
  failed and cancelled per task, step failures, step and run durations;
- **state gauges** (:class:`DurableCollector`, :func:`register_collector`), read from the
  database at scrape time with a few index-backed queries, in *one* process (usually the
  web process that serves ``/metrics``): runs per unfinished status per task, the age of
  the oldest waiting run per task, waker lateness, expired leases.

:func:`metrics_view` is a Django view that serves the registry (and, when
``PROMETHEUS_MULTIPROC_DIR`` is set, the counters of every worker process through
``prometheus_client``'s multiprocess mode). Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

logger = logging.getLogger("celery_durable")

#: Buckets of the step and run duration histograms, in seconds (10 ms .. 1 day).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
UNFINISHED = ("pending", "queued", "running", "sleeping", "waiting", "paused")

_DISPATCH_PREFIX = "celery_durable.metrics"


class _Counters:
    """The event metrics of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("task",)) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.started = counter("celery_durable_runs_started_total", "Runs whose first execution started.")
        self.resumed = counter(
            "celery_durable_runs_resumed_total", "Later executions of runs (after a retry, sleep, wait or crash)."
        )
        self.completed = counter("celery_durable_runs_completed_total", "Runs that completed.")
        self.failed = counter("celery_durable_runs_failed_total", "Runs that failed for good.")
        self.cancelled = counter("celery_durable_runs_cancelled_total", "Runs that were cancelled.")
        self.step_failures = counter(
            "celery_durable_step_failures_total",
            "Failed step attempts; retried=false when the failure ended the run.",
            ("task", "retried"),
        )
        self.step_duration = Histogram(
            "celery_durable_step_duration_seconds",
            "Duration of completed step bodies.",
            ("task",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.run_duration = Histogram(
            "celery_durable_run_duration_seconds",
            "Time from a run's first start to its completion (sleeps and waits included).",
            ("task",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def receivers(self) -> dict[str, Any]:
        def started(sender: str, task_name: str, **kw: Any) -> None:
            self.started.labels(task_name).inc()

        def resumed(sender: str, task_name: str, **kw: Any) -> None:
            self.resumed.labels(task_name).inc()

        def completed(sender: str, task_name: str, duration: float | None = None, **kw: Any) -> None:
            self.completed.labels(task_name).inc()
            if duration is not None:
                self.run_duration.labels(task_name).observe(duration)

        def failed(sender: str, task_name: str, **kw: Any) -> None:
            self.failed.labels(task_name).inc()

        def cancelled(sender: str, task_name: str, **kw: Any) -> None:
            self.cancelled.labels(task_name).inc()

        def step_failed(sender: str, task_name: str, retry_in: float | None = None, **kw: Any) -> None:
            self.step_failures.labels(task_name, "false" if retry_in is None else "true").inc()

        def step_completed(sender: str, task_name: str, duration: float | None = None, **kw: Any) -> None:
            if duration is not None:
                self.step_duration.labels(task_name).observe(duration)

        return {
            "run_started": started,
            "run_resumed": resumed,
            "run_completed": completed,
            "run_failed": failed,
            "run_cancelled": cancelled,
            "step_failed": step_failed,
            "step_completed": step_completed,
        }


_enabled: dict[int, _Counters] = {}


def enable(registry: CollectorRegistry | None = None) -> None:
    """Count run and step events into ``registry`` (default: ``prometheus_client.REGISTRY``).

    Call it once in every process that executes runs, e.g. in your Celery module after
    ``celery_durable.install(app)``. Calling it again for the same registry does nothing.
    """
    from prometheus_client import REGISTRY

    from . import signals

    registry = registry if registry is not None else REGISTRY
    if id(registry) in _enabled:
        return
    counters = _Counters(registry)
    for name, receiver in counters.receivers().items():
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"{_DISPATCH_PREFIX}.{name}.{id(registry)}")
    _enabled[id(registry)] = counters


def disable(registry: CollectorRegistry | None = None) -> None:
    """Undo :func:`enable` for ``registry`` (its metrics are unregistered)."""
    from prometheus_client import REGISTRY

    from . import signals

    registry = registry if registry is not None else REGISTRY
    counters = _enabled.pop(id(registry), None)
    if counters is None:
        return
    for name in counters.receivers():
        getattr(signals, name).disconnect(dispatch_uid=f"{_DISPATCH_PREFIX}.{name}.{id(registry)}")
    for metric in vars(counters).values():
        registry.unregister(metric)


class DurableCollector:
    """Gauges read from the database at scrape time (a few index-backed queries).

    - ``celery_durable_runs{task,status}``: unfinished runs (pending, queued, running,
      sleeping, waiting) per task: the backlog and what is in flight;
    - ``celery_durable_backlog_oldest_age_seconds{task}``: age of the oldest pending or
      queued run;
    - ``celery_durable_waker_lateness_seconds``: how long the most overdue sleeping or
      delayed run has been due without being woken (0 when none is);
    - ``celery_durable_expired_leases``: running runs whose lease expired (runs the reaper
      has yet to recover);
    - ``celery_durable_collector_up``: 0 if the database could not be read.
    """

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def describe(self) -> list[Metric]:
        # No queries at registration time (the registry calls describe() then).
        return []

    def collect(self) -> Iterator[Metric]:
        from django.db import DatabaseError
        from django.db.models import Count, Min
        from prometheus_client.core import GaugeMetricFamily

        from . import clock
        from .models import Run

        up = GaugeMetricFamily("celery_durable_collector_up", "1 if the runs table could be read at this scrape.")
        runs = GaugeMetricFamily(
            "celery_durable_runs", "Unfinished runs per task and status.", labels=["task", "status"]
        )
        oldest = GaugeMetricFamily(
            "celery_durable_backlog_oldest_age_seconds",
            "Age of the oldest pending or queued run per task.",
            labels=["task"],
        )
        started = time.monotonic()
        try:
            now = clock.now()
            rows = (
                Run.objects.using(self.using)
                .filter(status__in=UNFINISHED)
                .values("task_name", "status")
                .annotate(n=Count("*"), first=Min("created_at"))
                .order_by()
                .values_list("task_name", "status", "n", "first")
            )
            ages: dict[str, float] = {}
            for task, status, n, first in rows:
                runs.add_metric([task, status], n)
                if status in ("pending", "queued"):
                    ages[task] = max(ages.get(task, 0.0), (now - first).total_seconds())
            for task, age in sorted(ages.items()):
                oldest.add_metric([task], age)
            due = (
                Run.objects.using(self.using)
                .filter(status__in=("queued", "sleeping"), wake_at__lte=now)
                .order_by("wake_at")
                .values_list("wake_at", flat=True)
                .first()
            )
            expired = (
                Run.objects.using(self.using).filter(status="running", lease_expires_at__lt=now).order_by().count()
            )
        except DatabaseError:
            logger.warning("celery_durable metrics: could not read the runs table", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield runs
        yield oldest
        yield GaugeMetricFamily(
            "celery_durable_waker_lateness_seconds",
            "How long the most overdue sleeping or delayed run has been due without being woken.",
            value=0.0 if due is None else max(0.0, (now - due).total_seconds()),
        )
        yield GaugeMetricFamily(
            "celery_durable_expired_leases", "Running runs whose lease expired (not yet recovered).", value=expired
        )
        yield GaugeMetricFamily(
            "celery_durable_collector_seconds",
            "Time the database queries of this scrape took.",
            value=time.monotonic() - started,
        )


_db_collectors: list[DurableCollector] = []


def register_collector(registry: CollectorRegistry | None = None, using: str = "default") -> DurableCollector:
    """Register a :class:`DurableCollector` with ``registry`` (default: the global one).

    Do it in one process only (the one that serves ``/metrics``): every process that
    registers it reports the same database-wide numbers.
    """
    from prometheus_client import REGISTRY

    collector = DurableCollector(using)
    if registry is None:
        _db_collectors.append(collector)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return collector  # metrics_view adds it to each scrape's registry
        registry = REGISTRY
    registry.register(collector)
    return collector


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the metrics in the Prometheus text format.

    Serves the global registry; when ``PROMETHEUS_MULTIPROC_DIR`` is set, the counters
    every worker process wrote there (``prometheus_client``'s multiprocess mode) plus the
    database gauges of :func:`register_collector`. Route it yourself and protect it as any
    internal endpoint::

        path("metrics", celery_durable.metrics.metrics_view)
    """
    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in _db_collectors:
            registry.register(collector)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
