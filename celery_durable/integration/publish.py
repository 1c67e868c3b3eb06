"""Publishing run messages ("execute run X now") on the broker, after commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from celery.app.task import Task
from django.db import transaction

from .. import clock, serialization
from ..store.messages import RunMessage

logger = logging.getLogger("celery_durable")

# Marks a message published by celery-durable for an existing run row (wire name kept).
NUDGE_HEADER = "durable_nudge"
# Marks the message of a run that executed before: the router gives it the resume lane.
RESUME_HEADER = "durable_resume"

# Set by ``celery_durable.testing``: receives messages instead of the broker.
dispatch_override: Callable[[RunMessage], None] | None = None


def publish(app: Celery, message: RunMessage) -> bool:
    """Send one message with the run id as task id; ``False`` if it could not be sent."""
    if dispatch_override is not None:
        dispatch_override(message)
        return True
    options: dict[str, Any] = serialization.loads(message.options)
    headers = dict(options.pop("headers", None) or {})
    headers[NUDGE_HEADER] = True
    if message.resume:
        headers[RESUME_HEADER] = True
    countdown = message.countdown
    if message.due_at is not None:
        left = (message.due_at - clock.now()).total_seconds()
        countdown = left if left > 0.001 else None
    if countdown:
        options["countdown"] = countdown
    args = serialization.loads(message.args)
    kwargs = serialization.loads(message.kwargs)
    task = app.tasks.get(message.task_name)
    remember_run = getattr(app.backend, "remember_run", None)
    if remember_run is not None:  # DurableResultBackend: no query to learn this id is a run
        remember_run(message.run_id)
    try:
        if task is not None:
            # Task.apply_async, not the DurableTask override: this run exists already.
            Task.apply_async(task, args=args, kwargs=kwargs, task_id=message.run_id, headers=headers, **options)
        else:
            # Not registered in this process (a web process, a services-only host): send it by
            # name; a worker that has the task runs it, one that does not fails the run.
            app.send_task(
                message.task_name, args=args, kwargs=kwargs, task_id=message.run_id, headers=headers, **options
            )
    except Exception:
        logger.warning(
            "durable run %s: publishing failed; the sweeper publishes it again later",
            message.run_id,
            exc_info=True,
        )
        return False
    return True


def publish_all(app: Celery, messages: Iterable[RunMessage]) -> int:
    """Publish each message; return how many went out."""
    return sum(publish(app, message) for message in messages)


CHILD_HEADER = "durable_parent"


def publish_children(app: Celery, parent_id: str, children: list[tuple[str, dict[str, Any], bool]]) -> None:
    """Publish the child runs a parent just recorded (plain ones carry ``CHILD_HEADER``)."""
    for child_id, spec, _durable in children:
        message = RunMessage(
            child_id,
            spec["task"],
            serialization.dumps(spec["args"], "args"),
            serialization.dumps(spec["kwargs"], "kwargs"),
            serialization.dumps(spec["options"], "options"),
        )
        publish(app, message)


def publish_on_commit(app: Celery, messages: list[RunMessage], using: str = "default") -> None:
    """Publish once the current transaction commits (at once in autocommit mode)."""
    if messages:
        transaction.on_commit(lambda: publish_all(app, messages), using=using)
