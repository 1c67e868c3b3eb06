"""Django tasks (``django.tasks``, Django >= 6.0) run by ``celery_durable.tasks.DurableBackend``.

Imported only on Django >= 6.0 (tests/settings.py lists it in ``CELERY_IMPORTS`` there).
"""

import time

from asgiref.sync import sync_to_async
from celery import signature
from django.tasks import task

from celery_durable import Concurrency, step
from celery_durable.tasks import durable_options

from .models import BodyRun
from .tasks import counted


@task
def add(x, y):
    return step.run("add", lambda: x + y)


@task
def chain(hold_seconds: float):
    """Three counted steps; step two holds until a 'release' row appears (or hold_seconds pass)."""
    step.run("one", counted, "one", 1)

    def two():
        counted("two")
        deadline = time.monotonic() + hold_seconds
        while time.monotonic() < deadline:
            if BodyRun.objects.filter(run_id=step.run_id, step="release").exists():
                return 2
            time.sleep(0.05)
        return 2

    step.run("two", two)
    step.run("three", counted, "three", 3)
    return "done"


@task
def fails(message):
    step.run("before", counted, "before")
    raise ValueError(message)


@task(takes_context=True)
def with_context(context, label):
    return {"id": context.task_result.id, "attempt": context.attempt, "label": label}


@task
async def async_add(x, y):
    """An async task: steps are called through sync_to_async (they write to the database)."""
    first = await sync_to_async(step.run)("first", counted, "first", x)
    return first + y


@task
def naps(seconds):
    step.run("before", counted, "before")
    step.sleep("nap", seconds)
    step.run("after", counted, "after")
    return "rested"


@task
@durable_options(concurrency=Concurrency(key="user_id", limit=1), retries=0)
def one_per_user(user_id):
    return step.run("work", counted, "work", user_id)


@task
def configured(order_id):
    """Flow options in the backend's OPTIONS['TASK_OPTIONS'] (tests/settings.py): idempotency_key."""
    return step.run("work", counted, "work", order_id)


@task(priority=50)
def urgent(n):
    return n


@task
def confirmed_fan_out(user_id):
    """Waits for an event, then runs Django tasks as child runs (by their module path)."""
    event = step.wait_for_event("confirmed", "user.confirmed", match={"user_id": user_id}, timeout=3600)
    children = [signature(add.module_path, args=(n, n)) for n in range(3)]
    return {"event": event.data if event else None, "sums": step.gather("fan", children)}


@task
@durable_options(concurrency=Concurrency(key="user_id", limit=1))
def held_per_user(user_id, hold_seconds: float):
    """One run per user at a time; the body holds until a 'release' row for the user appears."""

    def hold():
        counted("held")
        deadline = time.monotonic() + hold_seconds
        while time.monotonic() < deadline:
            if BodyRun.objects.filter(run_id=f"release-{user_id}").exists():
                return user_id
            time.sleep(0.05)
        return user_id

    return step.run("hold", hold)


@task
@durable_options(priority=120)
def declared_priority(n):
    return n
