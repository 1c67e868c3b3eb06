"""Reading run rows for the transitions: their messages, and batches locked for one tick.

Also the columns of a run that a wake-up or an event sends back to the broker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import BooleanField, ExpressionWrapper, Q

from ..models import Run
from ..states import RunStatus
from .messages import RunMessage


def message_columns(prefix: str = "") -> tuple[Any, ...]:
    """What a run's message is made of (``message_from``): select it with the row.

    ``prefix`` reaches the run through a relation (``"run__"``). Whether the run started is
    read as a boolean, not as its ``started_at``: Django's loader of a PostgreSQL
    ``timestamptz`` is pure Python (~10 µs a value), a cost per row of a bulk read.
    """
    started = ExpressionWrapper(Q(**{f"{prefix}started_at__isnull": False}), output_field=BooleanField())
    return (*(f"{prefix}{column}" for column in ("id", "task_name", "args", "kwargs", "options")), started)


#: The message columns of a run read directly.
MESSAGE_FIELDS = message_columns()


def queued_again(now: datetime) -> dict[str, Any]:
    """The columns of a sleeping or waiting run that goes back to the broker (an ``update()``)."""
    return {"status": RunStatus.QUEUED, "waiting_for": None, "wake_at": None, "published_at": now}


def message_from(row: tuple[Any, ...]) -> RunMessage:
    """A message from a row of ``MESSAGE_FIELDS``: a run that started before is a resume."""
    run_id, task_name, args, kwargs, options, started = row
    return RunMessage(run_id, task_name, args, kwargs, options, resume=bool(started))


def message_for(run_id: str, using: str = "default") -> RunMessage:
    """The message that publishes ``run_id`` (one query)."""
    return message_from(Run.objects.using(using).values_list(*MESSAGE_FIELDS).get(id=run_id))


def messages_for(ids: list[str], using: str = "default") -> list[RunMessage]:
    """The messages of several runs (one query)."""
    return [message_from(row) for row in Run.objects.using(using).filter(id__in=ids).values_list(*MESSAGE_FIELDS)]


def locked_ids(queryset: Any, limit: int, using: str) -> list[str]:
    """Up to ``limit`` ids of ``queryset``, rows locked and skipped if another tick holds them."""
    return list(skip_locked(queryset, using).values_list("id", flat=True)[:limit])


def locked_messages(queryset: Any, limit: int, using: str) -> list[tuple[RunMessage, Any]]:
    """Up to ``limit`` runs of ``queryset`` as ``(message, wake_at)``, locked in the same query.

    Rows that another services tick holds are skipped (where the database can).
    """
    rows = skip_locked(queryset, using).values_list(*MESSAGE_FIELDS, "wake_at")[:limit]
    return [(message_from(row[:-1]), row[-1]) for row in rows]


def skip_locked(queryset: Any, using: str) -> Any:
    """``queryset`` locking its rows and skipping those another transaction holds, where the database can."""
    if connections[using].features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True)
    return queryset
