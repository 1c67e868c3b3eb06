"""Celery app and tasks of bench/scale.py (messages go to the broker; no worker consumes them)."""

from __future__ import annotations

import os

from celery import Celery

import celery_durable
from celery_durable import Concurrency, Throttle, durable_task, step

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.scale_settings")

app = Celery("bench_scale")
app.config_from_object("django.conf:settings", namespace="CELERY")
celery_durable.install(app)

LIMIT = 2  # bench/scale_data.py fills every key's slot row with this limit, all slots held


@durable_task(name="bench.scale.keyed", concurrency=Concurrency(limit=LIMIT, key="user"))
def keyed(user: str, i: int) -> int:
    return step.run("one", int, i)


@durable_task(name="bench.scale.idem", idempotency_key="key")
def idem(key: str) -> int:
    return step.run("one", len, key)


@durable_task(name="bench.scale.throttled", throttle=Throttle(limit=10, period=60, key="key"))
def throttled(key: str) -> int:
    return step.run("one", len, key)


@durable_task(name="bench.scale.plain")
def plain(i: int) -> int:
    return step.run("one", int, i)


@durable_task(name="bench.scale.roomy", concurrency=Concurrency(limit=1_000_000, key="user"))
def roomy(user: str, i: int) -> int:
    """One key that never fills: every call takes a slot on the same row (a hot key with free slots)."""
    return step.run("one", int, i)
