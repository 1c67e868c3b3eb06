"""The run page's waterfall: each step a bar on one time axis, drawn with HTML and CSS.

Positions are percentages of the run's span (from its start to its end, or to now while it
is unfinished), computed here so the template only places boxes: no JavaScript, no chart
library, nothing fetched from elsewhere. A sleep, a wait or child runs in progress end at
"now" with an open end; the step executing now (it has no row yet) is a bar from the last
checkpoint to now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from ..models import Run
from ..states import StepStatus
from .run_page import InProgress, human_duration

#: Ticks on the time axis.
TICKS = 5
#: The narrowest bar, in percent of the axis (an instant step stays visible).
MIN_WIDTH = 0.4


def _pct(value: float) -> str:
    # Into a style attribute as text: never through the template's number localization.
    return f"{max(0.0, min(100.0, value)):.3f}"


def _tick(seconds: float) -> str:
    # Runs that take milliseconds get distinct labels too ("+0.3 ms", not "+0 ms" four times).
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return human_duration(seconds)


@dataclass
class Bar:
    """One row of the waterfall."""

    label: str
    kind: str
    status: str
    left: str
    width: str
    title: str
    note: str = ""
    open_end: bool = False
    note_left: str = "0"


def _bar(
    label: str, kind: str, status: str, start: datetime, end: datetime, t0: datetime, span: float, note: str
) -> Bar:
    left = (start - t0).total_seconds() / span * 100
    width = max(MIN_WIDTH, (end - start).total_seconds() / span * 100)
    width = min(width, 100 - min(left, 100 - MIN_WIDTH))
    duration = human_duration(max(0.0, (end - start).total_seconds()))
    title = f"{label} ({kind}): {status}, {duration}" + (f", {note}" if note else "")
    return Bar(label, kind, status, _pct(left), _pct(width), title, note, note_left=_pct(min(left + width, 88)))


def build(run: Run, timeline: list[dict[str, Any]], current: InProgress | None, now: datetime) -> dict[str, Any] | None:
    """The bars and axis of ``run``'s steps, or ``None`` when there is nothing to draw."""
    steps = [entry["step"] for entry in timeline]
    if not steps and current is None:
        return None
    starts = [s.started_at for s in steps] + [m for m in (run.started_at,) if m is not None]
    t0 = min(starts) if starts else (current.since if current and current.since else run.created_at)
    ends = [s.finished_at for s in steps]
    if run.finished_at is not None:
        ends.append(run.finished_at)
    unfinished = run.finished_at is None
    if unfinished:
        ends.append(now)
    t1 = max([*ends, t0 + timedelta(milliseconds=1)])
    span = (t1 - t0).total_seconds()
    bars = []
    for step in steps:
        pending = step.status == StepStatus.PENDING
        end = now if pending and unfinished else step.finished_at
        note = f"{step.attempts} attempts" if step.attempts > 1 else ""
        bar = _bar(step.step_id, step.kind, step.status, step.started_at, max(end, step.started_at), t0, span, note)
        bar.open_end = pending and unfinished
        bars.append(bar)
    if current is not None and current.since is not None and run.status == "running":
        bar = _bar("(executing now)", "run", "running", current.since, now, t0, span, "")
        bar.title += f", on {current.worker}" if current.worker else ""
        bar.open_end = True
        bars.append(bar)
    ticks = [{"left": _pct(i * 100 / (TICKS - 1)), "label": "+" + _tick(span * i / (TICKS - 1))} for i in range(TICKS)]
    ticks[0]["label"] = timezone.localtime(t0).strftime("%H:%M:%S")
    return {"bars": bars, "ticks": ticks, "start": t0, "end": t1, "span": human_duration(span), "live": unfinished}
