"""What the run page shows, in words: the step in progress, waits and sleeps, slot holders.

Plain data for the template, computed from what the database records: the run row (its
status, lease owner, wake time, awaited event), its step rows (completed, failed, or
``pending`` for a sleep, a wait or child runs in progress) and the concurrency slots.
A plain step that is executing has no row until it finishes: the page then says which
worker holds the run and after which checkpoint it is executing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.db.models.functions import Length, Substr
from django.utils import dateformat, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from .. import readable, serialization
from ..models import Run, Slot, Step
from ..states import RunStatus, StepStatus
from ..store import explain as explaining

#: Runs listed as holding the slots a pending run waits for.
MAX_HOLDERS = 20


def human_duration(seconds: float | None) -> str:
    """``"350 ms"``, ``"4.2 s"``, ``"3 min 12 s"``, ``"2 h 5 min"``, ``"3 d 4 h"``; ``""`` for None."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def when(moment: datetime | None) -> str:
    """``2024-01-02 03:04:05`` in the current time zone ("" for None)."""
    return "" if moment is None else dateformat.format(timezone.localtime(moment), "Y-m-d H:i:s")


def relative(moment: datetime | None, now: datetime) -> str:
    """``"in 4 min 2 s"`` / ``"3.1 s ago"``."""
    if moment is None:
        return ""
    seconds = (moment - now).total_seconds()
    return f"in {human_duration(seconds)}" if seconds >= 0 else f"{human_duration(-seconds)} ago"


def decode_state(text: str | None) -> dict[str, Any] | None:
    """A sleep's, wait's or children step's stored state (``None`` if absent or not a dict)."""
    if not text:
        return None
    try:
        value = serialization.loads(text)
    except (ValueError, TypeError, KeyError):
        return None
    return value if isinstance(value, dict) else None


def describe_suspension(step: Step, state: dict[str, Any] | None, run: Run, now: datetime) -> SafeString | None:
    """A sleep, wait or child-run step in words: what it waits for and until when."""
    pending = step.status == StepStatus.PENDING
    if not state and not pending:
        return None  # no recorded state to describe: the output preview is shown instead
    state = state or {}
    if step.kind == "sleep":
        wake = state.get("wake_at") or (run.wake_at if pending else None)
        if pending:
            return format_html("sleeps until {} ({})", when(wake), relative(wake, now))
        return format_html("slept until {}", when(wake))
    if step.kind == "wait":
        name = state.get("name") or run.waiting_for or ""
        match = state.get("match")
        deadline = state.get("timeout_at") or (run.wake_at if pending else None)
        matching = format_html(" whose data matches <code>{}</code>", readable.dumps(match)) if match else ""
        if pending:
            return format_html(
                "waits for event <code>{}</code>{}; gives up at {} ({}), and the step returns None",
                name,
                matching,
                when(deadline),
                relative(deadline, now),
            )
        event = state.get("event")
        if event:
            return format_html(
                "received event <code>{}</code>{} (sent {})",
                name,
                format_html(" id <code>{}</code>", event.get("id")) if event.get("id") else "",
                when(event.get("received_at")) if isinstance(event.get("received_at"), datetime) else "",
            )
        return format_html(
            "timed out at {}: no event <code>{}</code>{} arrived; the step returned None",
            when(deadline),
            name,
            matching,
        )
    if step.kind in ("invoke", "gather", "chain") and pending:
        count = state.get("children")
        deadline = state.get("timeout_at")
        return format_html(
            "waits for {} child run{}{}",
            count if count is not None else "its",
            "" if count == 1 else "s",
            format_html(" until {} ({})", when(deadline), relative(deadline, now)) if deadline else "",
        )
    return None


@dataclass
class InProgress:
    """What an unfinished run is doing now, in words."""

    headline: SafeString
    since: datetime | None
    worker: str | None


def in_progress(run: Run, last: Step | None, now: datetime) -> InProgress | None:
    """The step in progress of a running run, or the retry a queued run is due for.

    A plain step writes its row only when it finishes, so a running run is described by
    its lease owner and its last checkpoint: "executing after step X".
    """
    since: datetime | None
    if run.status == RunStatus.RUNNING:
        if last is not None and last.status == StepStatus.PENDING:
            headline = format_html("resuming after step <code>{}</code> ({})", last.step_id, last.kind)
            since = max(last.finished_at, run.started_at) if run.started_at else last.finished_at
        elif last is not None and last.status == StepStatus.FAILED:
            headline = format_html("retrying step <code>{}</code> (attempt {})", last.step_id, last.attempts + 1)
            since = last.finished_at
        elif last is not None:
            headline = format_html("executing the step after <code>{}</code>", last.step_id)
            since = last.finished_at
        else:
            headline = mark_safe("executing, before its first checkpoint")  # a constant, nothing to escape
            since = run.started_at
        return InProgress(headline, since, run.lease_owner)
    if run.status == RunStatus.QUEUED and last is not None and last.status == StepStatus.FAILED:
        due = run.wake_at
        return InProgress(
            format_html(
                "step <code>{}</code> failed (attempt {}); the retry is due {}",
                last.step_id,
                last.attempts,
                format_html("at {} ({})", when(due), relative(due, now)) if due else "now",
            ),
            last.finished_at,
            None,
        )
    return None


def slot_holders(run: Run) -> list[Run]:
    """The runs holding slots of a pending run's concurrency keys (what it waits behind)."""
    keys = [key for key in (run.slot_key1, run.slot_key2) if key]
    if run.status != RunStatus.PENDING or not keys:
        return []
    return list(
        Run.objects.filter(holds_slots=True)
        .filter(Q(slot_key1__in=keys) | Q(slot_key2__in=keys))
        .exclude(pk=run.pk)
        .only("id", "task_name", "status", "started_at", "slot_key1", "slot_key2")
        .order_by("started_at", "pk")[:MAX_HOLDERS]
    )


#: Characters of a step output shown in the timeline.
OUTPUT_PREVIEW_CHARS = 200
#: Step outputs up to this many characters are decoded (for their preview and for the words
#: of a sleep or wait); longer ones are read cut at this length, type markers rewritten.
OUTPUT_DECODE_CHARS = 4000
#: Characters of arguments / result shown on the run page.
VALUE_DISPLAY_CHARS = 20_000
#: Steps shown on the run page (a run that loops may record thousands).
MAX_TIMELINE_STEPS = 500
#: Child runs listed on the run page.
MAX_CHILDREN = 200


def pretty_json(text: str | None, limit: int = VALUE_DISPLAY_CHARS) -> tuple[str, bool]:
    """Indented readable JSON for display, cut at ``limit`` characters; returns (text, truncated)."""
    return readable.pretty(text, limit)


def decode_error(text: str | None) -> dict[str, Any] | None:
    """A stored error record (``{type, module, message, traceback}``) or ``None``."""
    if not text:
        return None
    try:
        value = serialization.loads(text)
    except (ValueError, TypeError, KeyError):
        return {"type": "", "module": "", "message": text, "traceback": ""}
    if not isinstance(value, dict):
        return {"type": "", "module": "", "message": str(value), "traceback": ""}
    return {key: readable.readable(item) for key, item in value.items()}


def failed_attempts(step: Step) -> list[dict[str, Any]]:
    """Each failed attempt of a step, oldest first, when there is more than the one error shown.

    The step's error record is its last failed attempt's, with the attempts before it in
    ``earlier``; a step that then completed keeps it as history.
    """
    error = decode_error(step.error)
    if error is None:
        return []
    earlier = [attempt for attempt in error.get("earlier") or [] if isinstance(attempt, dict)]
    completed = step.status == StepStatus.COMPLETED
    if not completed and not earlier:
        return []  # one failed attempt: the error itself says it all
    last = {"attempt": step.attempts - 1 if completed else step.attempts, "type": error.get("type", "")}
    return [*earlier, {**last, "message": error.get("message", "")}]


def _timeline(run: Run, now: datetime) -> tuple[list[dict[str, Any]], int, bool]:
    rows = list(
        Step.objects.filter(run_id=run.pk)
        .defer("output")
        .annotate(output_head=Substr("output", 1, OUTPUT_DECODE_CHARS), output_size=Length("output"))
        .order_by("id")[: MAX_TIMELINE_STEPS + 1]
    )
    truncated = len(rows) > MAX_TIMELINE_STEPS
    rows = rows[:MAX_TIMELINE_STEPS]
    total = Step.objects.filter(run_id=run.pk).count() if truncated else len(rows)
    timeline = []
    for item in rows:
        finished = item.finished_at
        whole = item.output_size is None or item.output_size <= OUTPUT_DECODE_CHARS
        state = decode_state(item.output_head) if whole and item.kind != "run" else None
        words = describe_suspension(item, state, run, now)
        timeline.append(
            {
                "step": item,
                "duration": ""
                if item.status == StepStatus.PENDING
                else human_duration((finished - item.started_at).total_seconds()),
                "preview": "" if words else readable.compact(item.output_head, OUTPUT_PREVIEW_CHARS),
                "words": words,
                "error": decode_error(item.error),
                "attempts_failed": failed_attempts(item),
                "children": [],
            }
        )
    return timeline, total, truncated


def _current_suspension(run: Run, timeline: list[dict[str, Any]], last: Step | None) -> dict[str, Any]:
    """The sleep, wait or child runs a suspended run is in, for the page's "Now:" line."""
    if run.status not in (RunStatus.SLEEPING, RunStatus.WAITING) or not timeline or last is not timeline[-1]["step"]:
        return {"current_words": None, "current_step_id": None}
    if last.status != StepStatus.PENDING:
        return {"current_words": None, "current_step_id": None}
    return {"current_words": timeline[-1]["words"], "current_step_id": last.step_id}


def context(run: Run) -> dict[str, Any]:
    """Everything the run page shows about ``run`` (the admin adds URLs and permissions)."""
    from .. import clock, operations

    now = clock.now()
    args, args_cut = pretty_json(run.args)
    kwargs, kwargs_cut = pretty_json(run.kwargs)
    result, result_cut = pretty_json(run.result)
    timeline, steps_total, truncated = _timeline(run, now)
    last = timeline[-1]["step"] if timeline and not truncated else Step.objects.filter(run_id=run.pk).last()
    children = list(
        Run.objects.filter(parent_id=run.pk)
        .only("id", "task_name", "status", "created_at", "finished_at", "parent_step", "child_index")
        .order_by("created_at", "pk")[: MAX_CHILDREN + 1]
    )
    children_cut = len(children) > MAX_CHILDREN
    children = children[:MAX_CHILDREN]
    by_step: dict[str, list[Run]] = {}
    for child in children:
        by_step.setdefault(child.parent_step or "", []).append(child)
    for entry in timeline:
        entry["children"] = by_step.get(entry["step"].step_id, [])
    failed_step = next((e["step"].step_id for e in timeline if e["step"].status == StepStatus.FAILED), None)
    parent = None
    if run.parent_id:
        parent = Run.objects.filter(pk=run.parent_id).only("id", "task_name", "status").first()
    backlog_ahead = None
    run_keys = [key for key in (run.slot_key1, run.slot_key2) if key]
    slots = list(Slot.objects.filter(key__in=run_keys).order_by("key")) if run_keys else []
    key_backlog: dict[str, int] = {}
    if run.status == RunStatus.PENDING and run_keys and run.backlog_at is not None:
        # Its place in each key's backlog: pending runs ordered by (backlog_at, id).
        ahead = Q(backlog_at__lt=run.backlog_at) | Q(backlog_at=run.backlog_at, pk__lt=run.pk)
        for key in run_keys:
            key_backlog[key] = (
                Run.objects.filter(status=RunStatus.PENDING)
                .filter(Q(slot_key1=key) | Q(slot_key2=key))
                .filter(ahead)
                .count()
            )
    elif run.status in (RunStatus.PENDING, RunStatus.QUEUED):
        backlog_ahead = Run.objects.filter(
            task_name=run.task_name, status=run.status, created_at__lt=run.created_at
        ).count()
    return {
        "run": run,
        "now": now,
        "run_duration": human_duration(operations.duration(run)),
        "args_json": args,
        "args_cut": args_cut,
        "kwargs_json": kwargs,
        "kwargs_cut": kwargs_cut,
        "result_json": result,
        "result_cut": result_cut,
        "run_error": decode_error(run.error),
        "timeline": timeline,
        "steps_total": steps_total,
        "steps_truncated": truncated,
        "in_progress": in_progress(run, last, now),
        **_current_suspension(run, timeline, last),
        "failed_step": failed_step,
        "parent": parent,
        "parent_missing": bool(run.parent_id) and parent is None,
        "children": children,
        "children_cut": children_cut,
        "backlog_ahead": backlog_ahead,
        "slots": [
            {"key": slot.key, "in_use": slot.in_use, "limit": slot.limit, "ahead": key_backlog.get(slot.key)}
            for slot in slots
        ],
        "slot_holders": slot_holders(run),
        "lease_remaining": (run.lease_expires_at - now if run.lease_expires_at is not None else None),
    }


def explanation(run: Run) -> dict[str, Any]:
    """The run page's "Why waiting" line: the gate that holds an unfinished run, not running."""
    why = explaining.explain(run.pk, run=run)
    return {"explanation": why, "show_explanation": why.gate not in ("finished", "running")}
