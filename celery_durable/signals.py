"""Django signals celery-durable sends, for metrics, logging and alerting.

Every signal is sent with ``sender`` = the task name and keyword arguments ``run_id`` and
``task_name``; receivers that raise are logged and ignored (``send_robust``).

- ``run_started``: the first execution of a run claimed it (``execution`` = 1).
- ``run_resumed``: a later execution claimed it (after a retry, a crash, a sleep...).
- ``run_completed``: with ``result`` (the JSON value) and ``duration`` (seconds since start).
- ``run_failed``: with ``error`` (``{type, module, message, traceback}``) and ``step_id`` or None.
- ``run_cancelled``: with ``reason``.
- ``step_failed``: with ``step_id``, ``attempt``, ``error`` and ``retry_in`` (None: no retry).
- ``step_completed``: with ``step_id``, ``attempt`` and ``duration``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("celery_durable")

run_started = Signal()
run_resumed = Signal()
run_completed = Signal()
run_failed = Signal()
run_cancelled = Signal()
step_failed = Signal()
step_completed = Signal()


def send(signal: Signal, task_name: str, run_id: str, **kwargs: Any) -> None:
    """Send ``signal``; a receiver's error is logged, never raised into the run."""
    if not signal.has_listeners(task_name):
        return
    for receiver, response in signal.send_robust(sender=task_name, run_id=run_id, task_name=task_name, **kwargs):
        if isinstance(response, Exception):
            logger.error("celery_durable signal receiver %r failed: %r", receiver, response)
