"""The data of the admin dashboard: a handful of index-backed aggregate queries.

Nothing here scans the whole runs table: unfinished runs are counted through the
``status``-leading indexes, finished ones only over the chart's window through the
``finished_at`` index. The chart is drawn server-side as inline SVG (no JavaScript, no CDN).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Min
from django.db.models.functions import TruncHour

from .. import clock
from ..models import Run
from ..states import RunStatus

ACTIVE = (
    RunStatus.PENDING,
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.SLEEPING,
    RunStatus.WAITING,
    RunStatus.PAUSED,
)
BACKLOG = (RunStatus.PENDING, RunStatus.QUEUED)
FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED)
STATUS_ORDER = [s.value for s in (*ACTIVE, *FINISHED)]

CHART_WIDTH = 720
CHART_HEIGHT = 180
CHART_TOP = 10
CHART_LEFT = 40


@dataclass
class TaskRow:
    """One task's line in "runs per status per task"."""

    task: str
    counts: dict[str, int] = field(default_factory=dict)
    oldest_backlog: datetime | None = None

    @property
    def backlog(self) -> int:
        """Runs waiting to start: pending and queued."""
        return sum(self.counts.get(s, 0) for s in BACKLOG)

    def cells(self) -> list[int]:
        """The counts in ``STATUS_ORDER``."""
        return [self.counts.get(s, 0) for s in STATUS_ORDER]


@dataclass
class Bar:
    """One hour of the throughput chart, with its SVG geometry."""

    start: datetime
    completed: int
    failed: int
    other: int
    created: int
    svg: dict[str, str] = field(default_factory=dict)
    label: str = ""

    @property
    def finished(self) -> int:
        """Runs that finished in this hour."""
        return self.completed + self.failed + self.other


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def throughput(hours: int, now: datetime) -> tuple[list[Bar], dict[tuple[str, str], int]]:
    """Per hour over the last ``hours``: runs finished (completed / failed / other) and created.

    Also returns the finished runs of the window per (task, status): the same single pass
    over the ``finished_at`` index answers both.
    """
    first = _hour(now) - timedelta(hours=hours - 1)
    bars = {first + timedelta(hours=i): Bar(first + timedelta(hours=i), 0, 0, 0, 0) for i in range(hours)}
    per_task: dict[tuple[str, str], int] = defaultdict(int)
    finished = (
        Run.objects.filter(finished_at__gte=first)
        .annotate(hour=TruncHour("finished_at", tzinfo=UTC))
        .values("hour", "task_name", "status")
        .annotate(n=Count("*"))
        .order_by()
        .values_list("hour", "task_name", "status", "n")
    )
    for hour, task, status, n in finished:
        per_task[(task, status)] += n
        bar = bars.get(_hour(hour))
        if bar is None:
            continue
        if status == RunStatus.COMPLETED:
            bar.completed += n
        elif status == RunStatus.FAILED:
            bar.failed += n
        else:
            bar.other += n
    created = (
        Run.objects.filter(created_at__gte=first)
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("hour")
        .annotate(n=Count("*"))
        .order_by()
        .values_list("hour", "n")
    )
    for hour, n in created:
        bar = bars.get(_hour(hour))
        if bar is not None:
            bar.created += n
    ordered = [bars[key] for key in sorted(bars)]
    _layout(ordered)
    return ordered, dict(per_task)


def _num(value: float) -> str:
    # Geometry goes into SVG attributes as text: never through the template's number
    # localization (a decimal comma would break the drawing).
    return f"{value:.1f}"


def _layout(bars: list[Bar]) -> None:
    """Compute the SVG geometry: stacked finished bars, a tick for created runs."""
    peak = max([1, *(max(b.finished, b.created) for b in bars)])
    slot = (CHART_WIDTH - CHART_LEFT) / max(1, len(bars))
    bottom = CHART_TOP + CHART_HEIGHT
    for i, bar in enumerate(bars):
        x = CHART_LEFT + i * slot + slot * 0.15
        width = slot * 0.7
        y = float(bottom)
        geometry = {"x": _num(x), "width": _num(width), "x2": _num(x + width), "label_x": _num(x + width / 2)}
        for name in ("completed", "failed", "other"):
            height = CHART_HEIGHT * getattr(bar, name) / peak
            y -= height
            geometry[f"h_{name}"] = _num(height)
            geometry[f"y_{name}"] = _num(y)
        geometry["y_created"] = _num(bottom - CHART_HEIGHT * bar.created / peak)
        bar.svg = geometry
        bar.label = bar.start.strftime("%H:00") if i % 3 == 0 else ""


#: Concurrency keys shown on the dashboard (the longest backlogs).
TOP_KEYS = 15


def key_backlogs(limit: int = TOP_KEYS) -> list[dict[str, Any]]:
    """The concurrency keys with the most pending runs: count, oldest place, slots in use.

    Pending runs are grouped through the ``(status, slot_key, backlog_at)`` indexes of the
    concurrency backlog (index-only), and only the ``limit`` longest backlogs per key column
    are read (not one row per key); their slots come from the ``Slot`` rows.
    """
    from ..models import Slot

    pending: dict[str, dict[str, Any]] = {}
    for column in ("slot_key1", "slot_key2"):
        rows = (
            Run.objects.filter(status=RunStatus.PENDING, **{f"{column}__isnull": False})
            .values(column)
            .annotate(n=Count("*"), first=Min("backlog_at"))
            .order_by("-n", column)
            .values_list(column, "n", "first")[:limit]
        )
        for key, n, first in rows:
            entry = pending.setdefault(key, {"key": key, "pending": 0, "oldest": first})
            entry["pending"] += n
            if first is not None and (entry["oldest"] is None or first < entry["oldest"]):
                entry["oldest"] = first
    top = sorted(pending.values(), key=lambda e: (-e["pending"], e["key"]))[:limit]
    slots = {s.key: s for s in Slot.objects.filter(key__in=[e["key"] for e in top])} if top else {}
    for entry in top:
        slot = slots.get(entry["key"])
        entry["in_use"] = slot.in_use if slot else None
        entry["limit"] = slot.limit if slot else None
    return top


def context(hours: int = 24, due_within: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    """Everything the dashboard template shows."""
    now = clock.now()
    rows: dict[str, TaskRow] = defaultdict(lambda: TaskRow(""))
    active = (
        Run.objects.filter(status__in=ACTIVE)
        .values("task_name", "status")
        .annotate(n=Count("*"), oldest=Min("created_at"))
        .order_by()
    )
    for row in active:
        task = rows[row["task_name"]]
        task.task = row["task_name"]
        task.counts[row["status"]] = row["n"]
        if row["status"] in BACKLOG and (task.oldest_backlog is None or row["oldest"] < task.oldest_backlog):
            task.oldest_backlog = row["oldest"]
    bars, finished = throughput(hours, now)
    for (name, status), n in finished.items():
        task = rows[name]
        task.task = name
        if status in FINISHED:
            task.counts[status] = n
    tasks = sorted(rows.values(), key=lambda r: (-r.backlog, r.task))
    totals = [sum(column) for column in zip(*(t.cells() for t in tasks), strict=True)] if tasks else []

    oldest = None
    for status in BACKLOG:
        candidate = (
            Run.objects.filter(status=status)
            .order_by("created_at", "pk")
            .only("id", "task_name", "status", "created_at")
            .first()
        )
        if candidate is not None and (oldest is None or candidate.created_at < oldest.created_at):
            oldest = candidate
    due_soon = list(
        Run.objects.filter(status=RunStatus.SLEEPING, wake_at__lte=now + due_within)
        .order_by("wake_at", "pk")
        .only("id", "task_name", "status", "wake_at")[:10]
    )
    # Runs waiting for an event: the next one to give up (the (status, wake_at) index).
    next_timeout = (
        Run.objects.filter(status=RunStatus.WAITING, wake_at__isnull=False)
        .order_by("wake_at", "pk")
        .only("id", "task_name", "status", "wake_at", "waiting_for")
        .first()
    )
    late = (
        Run.objects.filter(status__in=(RunStatus.QUEUED, RunStatus.SLEEPING), wake_at__lte=now)
        .order_by("wake_at")
        .values_list("wake_at", flat=True)
        .first()
    )
    return {
        "key_backlogs": key_backlogs(),
        "now": now,
        "hours": hours,
        "statuses": STATUS_ORDER,
        "tasks": tasks,
        "totals": totals,
        "backlog_total": sum(t.backlog for t in tasks),
        "oldest_backlog": oldest,
        "oldest_backlog_age": None if oldest is None else now - oldest.created_at,
        "due_soon": due_soon,
        "sleeping_total": sum(t.counts.get(RunStatus.SLEEPING, 0) for t in tasks),
        "waiting_total": sum(t.counts.get(RunStatus.WAITING, 0) for t in tasks),
        "next_timeout": next_timeout,
        "due_within_minutes": round(due_within.total_seconds() / 60),
        "waker_lateness": None if late is None else now - late,
        "bars": bars,
        "chart": {
            "width": str(CHART_WIDTH),
            "height": str(CHART_HEIGHT + CHART_TOP + 20),
            "top": str(CHART_TOP),
            "peak_y": str(CHART_TOP + 8),
            "bottom": str(CHART_TOP + CHART_HEIGHT),
            "label_y": str(CHART_TOP + CHART_HEIGHT + 14),
            "left": str(CHART_LEFT),
            "axis_x": str(CHART_LEFT - 4),
            "peak": max([0, *(max(b.finished, b.created) for b in bars)]),
            "finished": sum(b.finished for b in bars),
            "failed": sum(b.failed for b in bars),
        },
    }
