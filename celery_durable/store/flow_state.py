"""Flow-control state rows (idempotency, debounce, singleton, rate limit, throttle), one per key.

Each row is locked for the intake transaction, so concurrent callers on any host see each
other's decisions; the engine's admission decides, these functions read and write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from ..models import FlowState, Run
from ..states import FINISHED, RunStatus


def lock(name: str) -> FlowState:
    """The row for ``name``, locked for this transaction (created if missing)."""
    try:
        with transaction.atomic():
            FlowState.objects.get_or_create(name=name)
    except IntegrityError:
        pass  # created concurrently
    return FlowState.objects.select_for_update().get(name=name)


def save(state: FlowState, **fields: Any) -> None:
    """Write ``fields`` of a locked row."""
    for name, value in fields.items():
        setattr(state, name, value)
    state.save(update_fields=list(fields))


def debounce(run_id: str, args_json: str, kwargs_json: str, wake_at: datetime) -> bool:
    """Move a debounced run's start out and give it the newest arguments, if it has not started."""
    updated = Run.objects.filter(id=run_id, status=RunStatus.QUEUED, wake_at__isnull=False).update(
        args=args_json, kwargs=kwargs_json, wake_at=wake_at
    )
    return updated == 1


def is_unfinished(run_id: str) -> bool:
    """Whether the run exists and has not finished (a singleton's holder)."""
    return Run.objects.filter(id=run_id).exclude(status__in=FINISHED).exists()
