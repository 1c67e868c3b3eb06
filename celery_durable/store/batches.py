"""Batched calls: record each call at ``.delay()``, then form a batch run from the waiting calls of a key.

Forming a batch creates its run and assigns its calls in one transaction; a call is assigned
with a conditional UPDATE (``run IS NULL``), so no call ever joins two batches. The run's
message is returned for publication after commit (the sweeper republishes it if that is lost).
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from datetime import timedelta

from django.db import IntegrityError, connections, transaction

from .. import clock
from ..models import BatchItem
from .messages import RunMessage
from .rows import skip_locked
from .runs import create


class _Raced(Exception):
    """Another transaction assigned some of the calls first: this forming is rolled back."""


def add(
    call_id: str,
    task_name: str,
    batch_key: str,
    arguments: str,
    max_size: int,
    wait_seconds: float,
    options: str = "{}",
    using: str = "default",
) -> bool:
    """Record one call waiting for its batch; ``False`` if a call with that id exists already."""
    now = clock.now()
    guard = transaction.atomic(using=using) if connections[using].in_atomic_block else nullcontext()
    try:
        with guard:
            BatchItem.objects.using(using).create(
                id=call_id,
                task_name=task_name,
                batch_key=batch_key,
                arguments=arguments,
                options=options,
                max_size=max_size,
                created_at=now,
                due_at=now + timedelta(seconds=wait_seconds),
            )
    except IntegrityError:
        if BatchItem.objects.using(using).filter(id=call_id).exists():
            return False
        raise
    return True


def waiting(batch_key: str, using: str = "default") -> int:
    """How many calls of ``batch_key`` wait for a batch (at most one index range scan)."""
    return BatchItem.objects.using(using).filter(run__isnull=True, batch_key=batch_key).count()


def form(task_name: str, batch_key: str, max_size: int, *, full: bool, using: str = "default") -> RunMessage | None:
    """Make a run of the oldest ``max_size`` waiting calls of ``batch_key``; its message, or ``None``.

    The run has the publish options of its first call.
    ``full``: only if ``max_size`` calls can be taken (calls another forming holds are
    skipped). ``None`` when no call (or too few) could be taken, or a concurrent forming
    assigned one of them first.
    """
    try:
        with transaction.atomic(using=using):
            items = (
                BatchItem.objects.using(using)
                .filter(run__isnull=True, batch_key=batch_key)
                .order_by("created_at", "id")
            )
            rows = list(skip_locked(items, using).values_list("id", "arguments", "options")[:max_size])
            if not rows or (full and len(rows) < max_size):
                return None
            run_id = str(uuid.uuid4())
            kwargs = '{"items": [' + ", ".join(arguments for _, arguments, _ in rows) + "]}"
            options = rows[0][2]
            create(run_id=run_id, task_name=task_name, args="[]", kwargs=kwargs, options=options, using=using)
            ids = [item_id for item_id, _, _ in rows]
            assigned = BatchItem.objects.using(using).filter(id__in=ids, run__isnull=True).update(run_id=run_id)
            if assigned != len(ids):
                raise _Raced
    except _Raced:
        return None
    return RunMessage(run_id, task_name, "[]", kwargs, options)


def due_keys(limit: int, using: str = "default") -> list[tuple[str, str, int]]:
    """``(task name, batch key, max size)`` of the batches whose oldest waiting call is due."""
    now = clock.now()
    rows = (
        BatchItem.objects.using(using)
        .filter(run__isnull=True, due_at__lte=now)
        .order_by("due_at")
        .values_list("task_name", "batch_key", "max_size")[: limit * 4]
    )
    seen: dict[str, tuple[str, str, int]] = {}
    for task_name, batch_key, max_size in rows:
        seen.setdefault(batch_key, (task_name, batch_key, max_size))
    return list(seen.values())[:limit]


def item_ids(run_id: str, using: str = "default") -> list[str]:
    """The call ids of a batch run."""
    return list(BatchItem.objects.using(using).filter(run_id=run_id).values_list("id", flat=True))


def get_item(call_id: str, using: str = "default") -> BatchItem | None:
    """The batched call ``call_id``, or ``None``."""
    return BatchItem.objects.using(using).filter(id=call_id).first()
