"""OpenTelemetry spans per run execution and per step (optional: ``celery-durable[opentelemetry]``).

:func:`enable` connects to :mod:`celery_durable.signals`: each execution of a run becomes a
span ``durable run <task>`` (a child of whatever span is current when the execution
starts, e.g. Celery's own instrumentation), and each step that runs (not a replayed one)
becomes a child span ``durable step <step id>`` covering the step body. Failed steps and
runs get an error status and an ``exception`` event with the stored error's type and
message. An execution that suspends (a sleep, a wait, a retry) ends its span when the
Celery task returns, with ``durable.outcome = "suspended"``.

Only ``opentelemetry-api`` is needed; configure the SDK and exporters as usual.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

_DISPATCH = "celery_durable.tracing"
SIGNALS = (
    "run_started",
    "run_resumed",
    "run_completed",
    "run_failed",
    "run_cancelled",
    "step_completed",
    "step_failed",
)


class _Tracing:
    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.open: dict[str, Span] = {}
        self.lock = threading.Lock()

    def _close(self, run_id: str, outcome: str, error: dict[str, Any] | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        with self.lock:
            span = self.open.pop(run_id, None)
        if span is None:
            return
        span.set_attribute("durable.outcome", outcome)
        if error is not None:
            _record_error(span, error)
            span.set_status(Status(StatusCode.ERROR, f"{error.get('type')}: {error.get('message')}"))
        elif outcome == "completed":
            span.set_status(Status(StatusCode.OK))
        span.end()

    def start(self, sender: str, run_id: str, task_name: str, execution: int = 1, **kw: Any) -> None:
        self._close(run_id, "superseded")  # an execution whose end we did not see
        span = self.tracer.start_span(
            f"durable run {task_name}",
            attributes={"durable.run_id": run_id, "durable.task": task_name, "durable.execution": execution},
        )
        with self.lock:
            self.open[run_id] = span

    def completed(self, sender: str, run_id: str, task_name: str, **kw: Any) -> None:
        self._close(run_id, "completed")

    def failed(self, sender: str, run_id: str, task_name: str, error: dict[str, Any] | None = None, **kw: Any) -> None:
        self._close(run_id, "failed", error or {"type": "Error", "message": ""})

    def cancelled(self, sender: str, run_id: str, task_name: str, **kw: Any) -> None:
        self._close(run_id, "cancelled")

    def _step(
        self, run_id: str, task_name: str, step_id: str, attempt: int, duration: float, error: dict[str, Any] | None
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        with self.lock:
            parent = self.open.get(run_id)
        context = trace.set_span_in_context(parent) if parent is not None else None
        end = time.time_ns()
        span = self.tracer.start_span(
            f"durable step {step_id}",
            context=context,
            start_time=end - int(max(0.0, duration) * 1e9),
            attributes={
                "durable.run_id": run_id,
                "durable.task": task_name,
                "durable.step_id": step_id,
                "durable.attempt": attempt,
            },
        )
        if error is not None:
            _record_error(span, error)
            span.set_status(Status(StatusCode.ERROR, f"{error.get('type')}: {error.get('message')}"))
        else:
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=end)

    def step_completed(
        self, sender: str, run_id: str, task_name: str, step_id: str, attempt: int = 1, duration: float = 0.0, **kw: Any
    ) -> None:
        self._step(run_id, task_name, step_id, attempt, duration, None)

    def step_failed(
        self,
        sender: str,
        run_id: str,
        task_name: str,
        step_id: str,
        attempt: int = 1,
        error: dict[str, Any] | None = None,
        retry_in: float | None = None,
        **kw: Any,
    ) -> None:
        # The failure signal carries no duration: the span marks the moment of the failure.
        self._step(run_id, task_name, step_id, attempt, 0.0, error or {"type": "Error", "message": ""})

    def task_ended(self, task_id: str | None = None, **kw: Any) -> None:
        if task_id:
            self._close(task_id, "suspended")

    def receivers(self) -> dict[str, Any]:
        return {
            "run_started": self.start,
            "run_resumed": self.start,
            "run_completed": self.completed,
            "run_failed": self.failed,
            "run_cancelled": self.cancelled,
            "step_completed": self.step_completed,
            "step_failed": self.step_failed,
        }


def _record_error(span: Span, error: dict[str, Any]) -> None:
    span.add_event(
        "exception",
        {
            "exception.type": str(error.get("type") or ""),
            "exception.message": str(error.get("message") or ""),
            "exception.stacktrace": str(error.get("traceback") or ""),
        },
    )


_active: _Tracing | None = None


def enable(tracer_provider: TracerProvider | None = None) -> None:
    """Emit spans for run executions and steps in this process (idempotent).

    Call it where runs execute (the workers), after configuring the OpenTelemetry SDK.
    """
    global _active
    from celery.signals import task_postrun
    from opentelemetry import trace

    from . import signals

    if _active is not None:
        return
    _active = _Tracing(trace.get_tracer("celery_durable", tracer_provider=tracer_provider))
    for name, receiver in _active.receivers().items():
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"{_DISPATCH}.{name}")
    task_postrun.connect(_active.task_ended, weak=False, dispatch_uid=f"{_DISPATCH}.task_postrun")


def disable() -> None:
    """Undo :func:`enable` (spans still open are ended)."""
    global _active
    from celery.signals import task_postrun

    from . import signals

    if _active is None:
        return
    for name in SIGNALS:
        getattr(signals, name).disconnect(dispatch_uid=f"{_DISPATCH}.{name}")
    task_postrun.disconnect(dispatch_uid=f"{_DISPATCH}.task_postrun")
    for run_id in list(_active.open):
        _active._close(run_id, "tracing disabled")
    _active = None
