"""Structured logs: the run id and step id on every log record emitted inside a run.

Three pieces, all opt-in through ``LOGGING``:

- :class:`RunContextFilter` adds ``run_id``, ``task_name``, ``step_id`` and ``attempt`` to
  every record (``None`` outside a durable run), whichever logger emitted it: your step
  bodies' own ``logger.info(...)`` calls get them too;
- :class:`JsonFormatter` writes one JSON object per line with those fields;
- :func:`log_signals` logs each run and step lifecycle signal (started, completed,
  failed, ...) on the ``celery_durable.events`` logger, with the same fields.

::

    LOGGING = {
        "version": 1,
        "filters": {"durable": {"()": "celery_durable.logs.RunContextFilter"}},
        "formatters": {"json": {"()": "celery_durable.logs.JsonFormatter"}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "filters": ["durable"], "formatter": "json"},
        },
        "root": {"handlers": ["console"], "level": "INFO"},
    }
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from .integration.worker_log import log_transitions

__all__ = ["current_fields", "log_signals", "log_transitions", "stop_logging_signals"]

FIELDS = ("run_id", "task_name", "step_id", "attempt")

#: The logger :func:`log_signals` writes to.
EVENTS_LOGGER = "celery_durable.events"


def current_fields() -> dict[str, Any]:
    """``run_id``, ``task_name``, ``step_id``, ``attempt`` of the run executing in this context."""
    from .runtime import context

    ctx = context._current.get()
    if ctx is None:
        return dict.fromkeys(FIELDS)
    # StepContext keeps the step being executed as (id as given, id with occurrence suffix).
    executing = getattr(ctx, "_current", None)
    return {
        "run_id": ctx.run_id,
        "task_name": getattr(ctx, "_task_name", None),
        "step_id": executing[1] if executing else None,
        "attempt": ctx.attempt if executing else None,
    }


class RunContextFilter(logging.Filter):
    """Adds ``run_id``, ``task_name``, ``step_id`` and ``attempt`` to each record.

    Values passed explicitly with ``extra=`` win. Never filters anything out.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current_fields()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, fields[name])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the run fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        for name in ("event", "error_type", "duration", "retry_in", "reason"):
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def log_signals(logger: logging.Logger | None = None) -> None:
    """Log every run and step lifecycle signal (idempotent).

    Records carry ``event`` (e.g. ``"run_failed"``), ``run_id``, ``task_name`` and, for
    steps, ``step_id`` and ``attempt``; failures are logged at WARNING (a retried step) or
    ERROR (a failed run), the rest at INFO.
    """
    from . import signals

    log = logger or logging.getLogger(EVENTS_LOGGER)

    def receiver(event: str, level: int) -> Any:
        def receive(sender: str, run_id: str, task_name: str, **kw: Any) -> None:
            error = kw.get("error") or {}
            extra = {
                "event": event,
                "run_id": run_id,
                "task_name": task_name,
                "step_id": kw.get("step_id"),
                "attempt": kw.get("attempt"),
                "duration": kw.get("duration"),
                "retry_in": kw.get("retry_in"),
                "reason": kw.get("reason") or None,
                "error_type": error.get("type"),
            }
            where = f" step {kw['step_id']!r}" if kw.get("step_id") else ""
            detail = f": {error.get('type')}: {error.get('message')}" if error else ""
            log.log(
                level, "durable %s %s %s%s%s", event.replace("_", " "), task_name, run_id, where, detail, extra=extra
            )

        return receive

    for event, level in LEVELS.items():
        getattr(signals, event).connect(receiver(event, level), weak=False, dispatch_uid=f"celery_durable.logs.{event}")


def stop_logging_signals() -> None:
    """Undo :func:`log_signals`."""
    from . import signals

    for event in LEVELS:
        getattr(signals, event).disconnect(dispatch_uid=f"celery_durable.logs.{event}")


LEVELS = {
    "run_started": logging.INFO,
    "run_resumed": logging.INFO,
    "run_completed": logging.INFO,
    "run_failed": logging.ERROR,
    "run_cancelled": logging.INFO,
    "step_failed": logging.WARNING,
    "step_completed": logging.DEBUG,
    "run_suspended": logging.INFO,
    "run_handed_off": logging.INFO,
    "run_recovered": logging.WARNING,
}
