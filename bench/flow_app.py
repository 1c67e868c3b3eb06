"""Celery app and tasks of the flow-control benchmark: ``celery -A bench.flow_app worker``.

bench/flow_control.py sets the environment (its own PostgreSQL database and Redis db) before
it starts the workers, so driver and workers share bench/settings.py's settings.
The task bodies are trivial and take no steps (flow control works on step-less tasks);
``limited`` and ``free`` differ only in ``Concurrency(limit=5, key="key")``.
"""

from __future__ import annotations

import inspect
import os
import time

from celery import Celery, shared_task
from celery.signals import worker_process_init

import celery_durable
from celery_durable import Concurrency, durable_task

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

LIMIT = 5

if os.environ.get("BENCH_FC_GIVE_BACK") == "1":

    @worker_process_init.connect(weak=False)
    def give_back(**_kwargs: object) -> None:
        """The release path before the direct hand-over (give the slot back, then promote in
        a second transaction): the drain is measured both ways in one invocation."""
        from celery_durable.store import slots

        slots._hand_over = lambda key: None  # type: ignore[assignment]


app = Celery("bench_flow")
app.config_from_object("django.conf:settings", namespace="CELERY")
celery_durable.install(app)


@shared_task(name="bench.fc.noop")
def noop() -> None:
    """The wake-up message of a drain measurement."""


@durable_task(name="bench.fc.free")
def free(key: str, i: int) -> int:
    return i + 1


@durable_task(name="bench.fc.limited", concurrency=Concurrency(limit=LIMIT, key="key"))
def limited(key: str, i: int) -> int:
    return i + 1


@durable_task(name="bench.fc.paced", concurrency=Concurrency(limit=LIMIT, key="key"))
def paced(key: str, i: int, seconds: float) -> float:
    """A run that takes ``seconds`` (hand-off latency without CPU saturation; slot holders).

    It returns when its body began (epoch seconds): bench/flow_phases.py measures the hand-off
    from one run's completion to the next body, which ``started_at`` no longer shows when the
    completion claims the next run for its process (the inline hand-off on PostgreSQL).
    """
    began = time.time()
    time.sleep(seconds)
    return began


@durable_task(name="bench.fc.paced_free")
def paced_free(key: str, i: int, seconds: float) -> int:
    """``paced`` without the limit: what the same body and pool reach unlimited (bench/peers)."""
    time.sleep(seconds)
    return i + 1


@durable_task(name="bench.fc.fifo10", concurrency=Concurrency(limit=LIMIT, key="key"))
def fifo10(key: str, i: int, tenant: str) -> int:
    """bench/flow_fair.py: the FIFO backlog of 10 tenants (no fair_key)."""
    return i + 1


if "fair_key" in inspect.signature(Concurrency).parameters:  # absent from snapshots older than fair backlogs

    @durable_task(name="bench.fc.fair10", concurrency=Concurrency(limit=LIMIT, key="key", fair_key="tenant"))
    def fair10(key: str, i: int, tenant: str) -> int:
        """bench/flow_fair.py: the same backlog, promoted round robin over the tenants."""
        return i + 1
