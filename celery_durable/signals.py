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
- ``run_suspended``: the run's execution ended and the run waits, with ``reason``
  (``"sleep"``, ``"wait"``, ``"children"``), ``step_id``, ``wake_at`` (the sleep's end, the
  wait's or the children's deadline, or None), ``event`` (the awaited event name) and
  ``children`` (how many child runs it waits for).
- ``run_handed_off``: a process that freed a concurrency slot executes the promoted run
  inline, with ``from_run_id`` (the run that finished there).
- ``run_recovered``: the reaper requeued the run because its worker was lost (its lease
  expired); it resumes from its last checkpoint.
- ``lease_at_risk``: the heartbeat of the process executing the run extended its lease more
  than half a lease after the previous extension, with ``gap`` (seconds) and ``pid``: the
  process stalled (CPU starvation, a blocked database connection), and a reaper may have
  taken the run back meanwhile (its current step's body may then run twice). ``sender`` is
  the empty string (the heartbeat knows run ids only).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from django.dispatch import Signal

logger = logging.getLogger("celery_durable")
OutcomeT = TypeVar("OutcomeT")

run_started = Signal()
run_resumed = Signal()
run_completed = Signal()
run_failed = Signal()
run_cancelled = Signal()
step_failed = Signal()
step_completed = Signal()
run_suspended = Signal()
run_handed_off = Signal()
run_recovered = Signal()
lease_at_risk = Signal()


def send(signal: Signal, task_name: str, run_id: str, **kwargs: Any) -> None:
    """Send ``signal``; a receiver's error is logged, never raised into the run."""
    if not signal.has_listeners(task_name):
        return
    for receiver, response in signal.send_robust(sender=task_name, run_id=run_id, task_name=task_name, **kwargs):
        if isinstance(response, Exception):
            logger.error("celery_durable signal receiver %r failed: %r", receiver, response)


def suspended(task_name: str, run_id: str, suspension: Any, outcome: OutcomeT) -> OutcomeT:
    """Send ``run_suspended`` for a committed suspension (``outcome.kind == "suspended"``); return ``outcome``.

    ``suspension`` is the ``_Suspend`` the body raised (its ``reason`` and ``details``).
    """
    if getattr(outcome, "kind", None) == "suspended":
        details = suspension.details
        children = len(details["specs"]) if "specs" in details else details.get("children")
        send(
            run_suspended,
            task_name,
            run_id,
            reason="children" if suspension.reason.startswith("children") else suspension.reason,
            step_id=details.get("step_id"),
            wake_at=details.get("wake_at"),
            event=details.get("event"),
            children=children,
        )
    return outcome


def recovered(nudges: list[Any], requeued: list[str]) -> None:
    """Send ``run_recovered`` for the reaper's requeued runs (``nudges`` give their task names)."""
    ids = set(requeued)
    for nudge in nudges:
        if nudge.run_id in ids:
            send(run_recovered, nudge.task_name, nudge.run_id)
