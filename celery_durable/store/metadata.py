"""Run metadata and step progress: fenced writes by the execution that holds the run.

``step.set_metadata`` writes the run's JSON ``metadata`` and one ``RunMetadata`` row per
field (the index of equality searches) in one transaction; ``step.progress`` updates the
run's ``progress``. Both are fenced by the generation, like checkpoints: an execution that
lost the run writes nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from .. import serialization
from ..exceptions import _LeaseLost
from ..models import Run, RunMetadata
from ..runtime.metadata import search_text
from ..states import RunStatus


def _held(run_id: str, generation: int, using: str) -> QuerySet[Run]:
    return Run.objects.using(using).filter(id=run_id, generation=generation, status=RunStatus.RUNNING)


def set_metadata(run_id: str, generation: int, metadata: dict[str, Any], changed: dict[str, Any], using: str) -> None:
    """Store the run's whole ``metadata`` and re-index the ``changed`` fields (fenced)."""
    with transaction.atomic(using=using):
        if _held(run_id, generation, using).update(metadata=serialization.dumps(metadata, "run metadata")) != 1:
            raise _LeaseLost(f"run {run_id} is no longer held at generation {generation}")
        RunMetadata.objects.using(using).filter(run_id=run_id, field__in=list(changed)).delete()
        RunMetadata.objects.using(using).bulk_create(
            [RunMetadata(run_id=run_id, field=name, value=search_text(value)) for name, value in changed.items()]
        )


def set_progress(run_id: str, generation: int, progress: dict[str, Any], using: str) -> None:
    """Store the running step's progress on the run (fenced; one UPDATE)."""
    if _held(run_id, generation, using).update(progress=serialization.dumps(progress, "step progress")) != 1:
        raise _LeaseLost(f"run {run_id} is no longer held at generation {generation}")


def matching(runs: QuerySet[Run], conditions: list[tuple[str, Any]]) -> QuerySet[Run]:
    """``runs`` whose metadata has each ``(field, value)``, compared as search text.

    A value is indexed as the str itself or as its JSON: ``"42"`` typed in a search box
    finds ``order_id=42`` stored as an int as well as ``"42"``; ``"true"`` finds ``True``.
    """
    for name, value in conditions:
        ids = RunMetadata.objects.using(runs.db).filter(field=name, value=search_text(value))
        runs = runs.filter(id__in=ids.values("run_id"))
    return runs
