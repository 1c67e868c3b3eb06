"""Each call of a batch gets the batch run's result under its own id in Celery's result backend.

So ``task.delay(...).get()`` of one call returns (or raises) what the batch run did. Stored
when the run ends, and again on a redelivery of the ended run (a worker that died before
storing them), by the cancel path and by the reaper.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Celery, states
from celery.backends.base import DisabledBackend

from ..exceptions import RunCancelled, RunSkipped
from ..states import RunStatus

if TYPE_CHECKING:
    from ..engine.execution import Delivery

logger = logging.getLogger("celery_durable")


def store_for_calls(app: Celery, run_id: str, delivery: Delivery) -> None:
    """Store the ended batch run's result (or error) for each of its calls."""
    if not _stores_results(app):
        return
    if delivery.ended is not None:
        status, value = delivery.ended
        if status == RunStatus.COMPLETED:
            _store(app, run_id, value, states.SUCCESS)
        elif status == RunStatus.FAILED:
            meta = app.backend.get_task_meta(run_id)
            error = meta.get("result") if meta.get("status") == states.FAILURE else None
            if isinstance(error, BaseException):
                _store(app, run_id, error, states.FAILURE)
        else:
            message = (value or {}).get("message", str(status))
            error = RunCancelled(message) if status == RunStatus.CANCELLED else RunSkipped(message)
            _store(app, run_id, error, states.FAILURE)
        return
    outcome = delivery.outcome
    if outcome.kind == "completed":
        _store(app, run_id, outcome.value, states.SUCCESS)
    elif outcome.kind == "failed" and outcome.error is not None:
        _store(app, run_id, outcome.error, states.FAILURE)
    elif outcome.kind == "cancelled":
        _store(app, run_id, RunCancelled(f"run {run_id} was cancelled"), states.FAILURE)


def store_error(app: Celery, run_id: str, error: BaseException) -> None:
    """Store ``error`` for each call of ``run_id`` (if it is a batch run)."""
    _store(app, run_id, error, states.FAILURE)


def _stores_results(app: Celery) -> bool:
    """Whether the result backend needs the calls' results (``DurableResultBackend`` reads the run rows)."""
    return not isinstance(app.backend, DisabledBackend) and not getattr(app.backend, "reads_run_rows", False)


def _store(app: Celery, run_id: str, value: Any, state: str) -> None:
    if not _stores_results(app):
        return
    from ..store import batches  # needs Django's app registry: not at import time

    for call_id in batches.item_ids(run_id):
        try:
            app.backend.store_result(call_id, value, state)
        except Exception:  # the result backend is down: the batch run's own result still is
            logger.exception("batch run %s: the result of call %s could not be stored", run_id, call_id)
