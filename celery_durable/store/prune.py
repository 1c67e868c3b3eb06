"""Retention: deleting finished runs, in batches, never what an unfinished run still needs."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet

from .. import clock
from ..models import Run, Step
from ..states import FINISHED


def prunable(older_than: timedelta, now: datetime | None = None) -> QuerySet[Run]:
    """Finished runs that finished more than ``older_than`` ago, except children of unfinished parents.

    A parent waiting in ``step.gather`` or ``step.invoke`` reads its finished children when
    it resumes: they are kept until the parent finishes too.
    """
    cutoff = (now or clock.now()) - older_than
    # NOT EXISTS on the parent's primary key: an anti-join, not a NOT IN over every unfinished run.
    unfinished_parent = Run.objects.filter(pk=OuterRef("parent_id")).exclude(status__in=FINISHED)
    return Run.objects.filter(status__in=FINISHED, finished_at__lt=cutoff).exclude(Exists(unfinished_parent))


def next_batch(old: QuerySet[Run], batch: int) -> list[str]:
    """The ids of the next ``batch`` prunable runs, oldest first (through the finished_at index)."""
    return list(old.order_by("finished_at", "pk").values_list("pk", flat=True)[:batch])


def delete_batch(ids: list[str], older_than: timedelta, now: datetime | None = None) -> int:
    """Delete the runs of ``ids`` that are still prunable, with their steps; return how many.

    One transaction: the runs are re-checked and locked first (``SELECT ... FOR UPDATE``;
    SQLite serializes writers), so a run replayed since its id was read, or a child whose
    parent was replayed, keeps its row and its checkpoints; a replay that comes meanwhile
    waits for the lock, then finds the run gone and changes nothing. Only the locked runs'
    steps are deleted.
    """
    with transaction.atomic():
        locked = list(
            prunable(older_than, now).select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True)
        )
        if not locked:
            return 0
        Step.objects.filter(run_id__in=locked).delete()
        Run.objects.filter(parent_id__in=locked).update(parent=None)
        Run.objects.filter(pk__in=locked).delete()
    return len(locked)
