"""Typed, lazily read settings: the ``CELERY_DURABLE`` dict in Django settings.

Every access reads Django settings again, so ``override_settings`` works and nothing is
read at import time. No setting shapes a model field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from .exceptions import DurableConfigError

DEFAULTS: dict[str, Any] = {
    "LEASE_SECONDS": 30.0,
    "HEARTBEAT_SECONDS": 10.0,
    "WAKER_INTERVAL": 1.0,
    "REPUBLISH_AFTER_SECONDS": 120.0,
    "MAX_STEP_OUTPUT_BYTES": 1_048_576,
    "MAX_ARGUMENT_BYTES": 1_048_576,
    "MAX_ERROR_TEXT_BYTES": 65_536,
    "IDEMPOTENCY_WINDOW": timedelta(hours=24),
    "RETENTION_DAYS": 30,
    "MAX_RECOVERIES": 20,
    "RUN_SERVICES_IN_WORKER": True,
    "REUSE_CONNECTIONS": True,
    "WAKER_BATCH_SIZE": 500,
    "OBSERVE_PLAIN_TASKS": False,
    "INLINE_HANDOFF_RUNS": 10,
    "ADMIN_ARGUMENT_SEARCH": False,
    "PLAIN_RESULT_BACKEND": None,
}


@dataclass(frozen=True)
class DurableSettings:
    """A snapshot of the ``CELERY_DURABLE`` settings with defaults filled in."""

    LEASE_SECONDS: float
    HEARTBEAT_SECONDS: float
    WAKER_INTERVAL: float
    REPUBLISH_AFTER_SECONDS: float
    MAX_STEP_OUTPUT_BYTES: int
    MAX_ARGUMENT_BYTES: int
    # An error's message and its traceback are each cut to this many bytes (with a marker).
    MAX_ERROR_TEXT_BYTES: int
    IDEMPOTENCY_WINDOW: timedelta
    RETENTION_DAYS: int
    MAX_RECOVERIES: int
    RUN_SERVICES_IN_WORKER: bool
    REUSE_CONNECTIONS: bool
    WAKER_BATCH_SIZE: int
    # Record plain tasks as one-step runs: False, True (all) or a list of fnmatch patterns.
    OBSERVE_PLAIN_TASKS: bool | tuple[str, ...]
    # A process that frees a concurrency slot runs up to this many promoted runs itself.
    INLINE_HANDOFF_RUNS: int
    # The admin's search also looks inside every run's arguments (a scan of the table).
    ADMIN_ARGUMENT_SEARCH: bool
    # With ``celery_durable.results.DurableResultBackend``: the result backend URL of plain tasks.
    PLAIN_RESULT_BACKEND: str | None


def _validate(values: dict[str, Any]) -> None:
    for name in ("LEASE_SECONDS", "HEARTBEAT_SECONDS", "WAKER_INTERVAL", "REPUBLISH_AFTER_SECONDS"):
        value = values[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise DurableConfigError(f"CELERY_DURABLE[{name!r}] must be a positive number, got {value!r}")
    for name in ("MAX_STEP_OUTPUT_BYTES", "MAX_ARGUMENT_BYTES", "RETENTION_DAYS", "WAKER_BATCH_SIZE"):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DurableConfigError(f"CELERY_DURABLE[{name!r}] must be a positive int, got {value!r}")
    error_bytes = values["MAX_ERROR_TEXT_BYTES"]
    if not isinstance(error_bytes, int) or isinstance(error_bytes, bool) or error_bytes < 1024:
        raise DurableConfigError(f"CELERY_DURABLE['MAX_ERROR_TEXT_BYTES'] must be an int >= 1024, got {error_bytes!r}")
    for name in ("INLINE_HANDOFF_RUNS",):
        if not isinstance(values[name], int) or isinstance(values[name], bool) or values[name] < 0:
            raise DurableConfigError(f"CELERY_DURABLE[{name!r}] must be an int >= 0, got {values[name]!r}")
    if (
        not isinstance(values["MAX_RECOVERIES"], int)
        or isinstance(values["MAX_RECOVERIES"], bool)
        or values["MAX_RECOVERIES"] < 0
    ):
        raise DurableConfigError(
            f"CELERY_DURABLE['MAX_RECOVERIES'] must be an int >= 0, got {values['MAX_RECOVERIES']!r}"
        )
    for name in ("RUN_SERVICES_IN_WORKER", "REUSE_CONNECTIONS", "ADMIN_ARGUMENT_SEARCH"):
        if not isinstance(values[name], bool):
            raise DurableConfigError(f"CELERY_DURABLE[{name!r}] must be True or False, got {values[name]!r}")
    observe = values["OBSERVE_PLAIN_TASKS"]
    if not isinstance(observe, bool) and (
        not isinstance(observe, list | tuple) or not all(isinstance(p, str) and p for p in observe)
    ):
        raise DurableConfigError(
            f"CELERY_DURABLE['OBSERVE_PLAIN_TASKS'] must be True, False or a list of task name "
            f"patterns, got {observe!r}"
        )
    plain_backend = values["PLAIN_RESULT_BACKEND"]
    if plain_backend is not None and (not isinstance(plain_backend, str) or not plain_backend):
        raise DurableConfigError(
            f"CELERY_DURABLE['PLAIN_RESULT_BACKEND'] must be a result backend URL or None, got {plain_backend!r}"
        )
    if values["HEARTBEAT_SECONDS"] >= values["LEASE_SECONDS"]:
        raise DurableConfigError("CELERY_DURABLE['HEARTBEAT_SECONDS'] must be below LEASE_SECONDS")


def get_settings() -> DurableSettings:
    """Read the ``CELERY_DURABLE`` settings dict now, with defaults and validation."""
    from django.conf import settings

    user = getattr(settings, "CELERY_DURABLE", None) or {}
    if not isinstance(user, dict):
        raise DurableConfigError("settings.CELERY_DURABLE must be a dict")
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        raise DurableConfigError(f"unknown CELERY_DURABLE keys: {sorted(unknown)}; known keys: {sorted(DEFAULTS)}")
    values = {**DEFAULTS, **user}
    window = values["IDEMPOTENCY_WINDOW"]
    if isinstance(window, int | float):
        values["IDEMPOTENCY_WINDOW"] = timedelta(seconds=window)
    _validate(values)
    if isinstance(values["OBSERVE_PLAIN_TASKS"], list):
        values["OBSERVE_PLAIN_TASKS"] = tuple(values["OBSERVE_PLAIN_TASKS"])
    return DurableSettings(**{f.name: values[f.name] for f in fields(DurableSettings)})


def error_text_limit() -> int:
    """``MAX_ERROR_TEXT_BYTES``, or its default where settings cannot be read (recording an error must not fail)."""
    try:
        return get_settings().MAX_ERROR_TEXT_BYTES
    except Exception:
        return DEFAULTS["MAX_ERROR_TEXT_BYTES"]  # type: ignore[no-any-return]
