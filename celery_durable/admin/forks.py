"""Forks on the run page: the fork form, the links between a fork and its original, the diff.

The fork form (``celery_durable.fork_run``) picks the step to re-execute from and edits the
arguments as JSON; the fork is made by :func:`celery_durable.integration.actions.fork`,
the same function as ``celery_durable.fork``, and recorded as a ``LogEntry`` on both runs.
The run page of a fork shows its step outputs side by side with its original's.
"""

from __future__ import annotations

from typing import Any

from django.db.models.functions import Substr

from .. import readable, serialization
from ..exceptions import DurableConfigError, SerializationError
from ..models import Run, Step
from ..runtime.metadata import search_text
from ..runtime.steps import BODY_STEP
from ..states import RunStatus, StepStatus
from .run_page import OUTPUT_DECODE_CHARS, OUTPUT_PREVIEW_CHARS

#: Forks listed on a run page.
MAX_FORKS = 50
#: Steps compared in a fork's diff.
MAX_DIFF_STEPS = 500


def family(run: Run) -> dict[str, Any]:
    """The run's original (if it is a fork) and its forks, newest first."""
    forks = list(
        Run.objects.filter(forked_from_id=run.pk)
        .only("id", "task_name", "status", "created_at", "forked_at_step")
        .order_by("-created_at", "-pk")[: MAX_FORKS + 1]
    )
    original = None
    if run.forked_from_id:
        original = Run.objects.filter(pk=run.forked_from_id).only("id", "task_name", "status").first()
    return {
        "forks": forks[:MAX_FORKS],
        "forks_cut": len(forks) > MAX_FORKS,
        "fork_original": original,
        "fork_diff": diff(original.pk, run.pk) if original is not None else [],
    }


def progress(run: Run, timeline: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The running step's last ``step.progress``, while the run runs and that step has not completed."""
    record = run.progress_value if run.status == RunStatus.RUNNING else None
    if not record:
        return None
    done_steps = {entry["step"].step_id for entry in timeline if entry["step"].status == StepStatus.COMPLETED}
    if record.get("step") in done_steps:
        return None
    total, done = record.get("total") or 0, record.get("done") or 0
    percent = round(100 * min(done, total) / total) if total else None
    return {**record, "percent": percent}


def metadata(run: Run) -> list[tuple[str, str]]:
    """The run's metadata fields as ``(field, search text)``, sorted by field."""
    return sorted((name, search_text(value)) for name, value in run.metadata_value.items())


def _outputs(run_id: str) -> dict[str, tuple[str, str, str]]:
    rows = (
        Step.objects.filter(run_id=run_id)
        .exclude(step_id=BODY_STEP)
        .annotate(head=Substr("output", 1, OUTPUT_DECODE_CHARS))
        .order_by("id")
        .values_list("step_id", "status", "head")[:MAX_DIFF_STEPS]
    )
    return {
        step_id: (status, head or "", readable.compact(head, OUTPUT_PREVIEW_CHARS)) for step_id, status, head in rows
    }


def diff(original_id: str, fork_id: str) -> list[dict[str, Any]]:
    """One row per step id of either run, in the fork's order then the original's rest.

    ``same`` compares the stored outputs (their first ``OUTPUT_DECODE_CHARS`` characters).
    """
    left, right = _outputs(original_id), _outputs(fork_id)
    rows = []
    for step_id in [*right, *(sid for sid in left if sid not in right)]:
        old, new = left.get(step_id), right.get(step_id)
        rows.append(
            {
                "step_id": step_id,
                "original": old,
                "fork": new,
                "same": old is not None and new is not None and old[:2] == new[:2],
            }
        )
    return rows


def fork_choices(run: Run) -> list[str]:
    """The step ids a fork can start from, in history order."""
    return list(
        Step.objects.filter(run_id=run.pk)
        .exclude(step_id=BODY_STEP)
        .order_by("id")
        .values_list("step_id", flat=True)[:MAX_DIFF_STEPS]
    )


def parse_arguments(args_text: str, kwargs_text: str) -> tuple[list[Any], dict[str, Any]]:
    """The form's JSON arguments, or raise ``DurableConfigError`` saying what is wrong.

    They are read as the stored arguments are (the same JSON, with its datetime, Decimal
    and UUID forms), so the original's arguments shown in the form round-trip unchanged.
    """
    try:
        args = serialization.loads(args_text or "[]")
        kwargs = serialization.loads(kwargs_text or "{}")
    except (ValueError, SerializationError) as exc:
        raise DurableConfigError(f"the arguments are not valid JSON: {exc}") from None
    if not isinstance(args, list):
        raise DurableConfigError("args must be a JSON array")
    if not isinstance(kwargs, dict):
        raise DurableConfigError("kwargs must be a JSON object")
    return args, kwargs
