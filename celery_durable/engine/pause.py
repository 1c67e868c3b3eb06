"""Pausing and resuming a task or one of its concurrency keys: the store's transitions, then publishing."""

from __future__ import annotations

import logging
from datetime import datetime

from ..models import Pause
from ..store import pausing
from ..store.pausing import Resumed
from .admission import resumed_start
from .ports import Publisher, TaskRegistry

logger = logging.getLogger("celery_durable")


def pause(task_name: str, key: str | None, by: str) -> tuple[Pause, bool]:
    """Pause ``task_name`` (or its concurrency ``key``); ``(pause, created)``.

    Nothing is published or revoked: a queued run's message is refused at its claim and the
    run waits in ``paused``; an executing run stops at its next step boundary.
    """
    held, created = pausing.pause(task_name, key, by)
    if created:
        logger.info("durable task %s%s paused by %s", task_name, "" if key is None else f" [{key}]", by or "?")
    return held, created


def resume(task_name: str, key: str | None, registry: TaskRegistry, publisher: Publisher) -> Resumed:
    """Lift the pause; the runs it held are queued and published (after commit) in their original order.

    A throttled task's runs take new throttle slots, in that order (their old ones passed).
    """
    spec = registry.spec(task_name)
    start_at = None
    if spec is not None and spec.throttle is not None:
        throttled = spec

        def start_at(args: str, kwargs: str) -> datetime | None:
            return resumed_start(throttled, args, kwargs)

    outcome = pausing.resume(task_name, key, start_at)
    publisher.publish_on_commit(outcome.messages)
    if outcome.deleted:
        logger.info(
            "durable task %s%s resumed: %d run(s) queued again",
            task_name,
            "" if key is None else f" [{key}]",
            len(outcome.run_ids),
        )
    return outcome
