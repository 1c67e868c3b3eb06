"""Publishing nudges: messages that say "execute run X now", sent after commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.app.task import Task
from django.db import transaction

from .. import clock, serialization

if TYPE_CHECKING:
    from ..runs import Nudge

logger = logging.getLogger("celery_durable")

# Marks a message published by celery-durable for an existing run row.
NUDGE_HEADER = "durable_nudge"

# Set by ``celery_durable.testing``: receives nudges instead of the broker.
dispatch_override: Callable[[Nudge], None] | None = None


def publish(app: Celery, nudge: Nudge) -> bool:
    """Send one nudge with the run id as task id; ``False`` if it could not be sent."""
    if dispatch_override is not None:
        dispatch_override(nudge)
        return True
    options: dict[str, Any] = serialization.loads(nudge.options)
    headers = dict(options.pop("headers", None) or {})
    headers[NUDGE_HEADER] = True
    countdown = nudge.countdown
    if nudge.due_at is not None:
        left = (nudge.due_at - clock.now()).total_seconds()
        countdown = left if left > 0.001 else None
    if countdown:
        options["countdown"] = countdown
    args = serialization.loads(nudge.args)
    kwargs = serialization.loads(nudge.kwargs)
    task = app.tasks.get(nudge.task_name)
    try:
        if task is not None:
            # Task.apply_async, not the DurableTask override: this run exists already.
            Task.apply_async(task, args=args, kwargs=kwargs, task_id=nudge.run_id, headers=headers, **options)
        else:
            # Not registered in this process (a web process, a services-only host): send it by
            # name; a worker that has the task runs it, one that does not fails the run.
            app.send_task(nudge.task_name, args=args, kwargs=kwargs, task_id=nudge.run_id, headers=headers, **options)
    except Exception:
        logger.warning(
            "durable run %s: publishing failed; the sweeper publishes it again later",
            nudge.run_id,
            exc_info=True,
        )
        return False
    return True


def publish_all(app: Celery, nudges: Iterable[Nudge]) -> int:
    """Publish each nudge; return how many went out."""
    return sum(publish(app, nudge) for nudge in nudges)


CHILD_HEADER = "durable_parent"


def publish_children(app: Celery, parent_id: str, children: list[tuple[str, dict[str, Any], bool]]) -> None:
    """Publish the child runs a parent just recorded (plain ones carry ``CHILD_HEADER``)."""
    from ..runs import Nudge

    for child_id, spec, _durable in children:
        nudge = Nudge(
            child_id,
            spec["task"],
            serialization.dumps(spec["args"], "args"),
            serialization.dumps(spec["kwargs"], "kwargs"),
            serialization.dumps(spec["options"], "options"),
        )
        publish(app, nudge)


def publish_on_commit(app: Celery, nudges: list[Nudge], using: str = "default") -> None:
    """Publish once the current transaction commits (at once in autocommit mode)."""
    if nudges:
        transaction.on_commit(lambda: publish_all(app, nudges), using=using)
