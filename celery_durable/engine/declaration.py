"""Validation of a durable task's declared options: a clear error at import time, naming task and option."""

from __future__ import annotations

import inspect
from typing import Any

from ..exceptions import DurableConfigError
from ..flow.keys import check_key_spec
from ..options import (
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    RateLimit,
    RetryPolicy,
    Schedule,
    Singleton,
    Throttle,
    Timeouts,
)
from ..runtime.events import validate_event_name

RETRY_OPTIONS = ("retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "default_retry_delay")


def validate_options(task_name: str, attrs: dict[str, Any]) -> None:
    """Raise ``DurableConfigError`` naming task and option for an invalid declaration."""
    _validate_suspension_options(task_name, attrs)
    priority = attrs.get("priority")
    if (
        priority is not None
        and not callable(priority)
        and (isinstance(priority, bool) or not isinstance(priority, int) or not -600 <= priority <= 600)
    ):
        raise DurableConfigError(f"{task_name}: option 'priority' must be an int in -600..600 or a callable")
    _validate_concurrency(task_name, attrs.get("concurrency"), attrs.get("run"))
    _validate_flow_options(task_name, attrs)
    _validate_batch(task_name, attrs)
    try:
        celery_retry_options(attrs)
        RetryPolicy(**{k: attrs[k] for k in RETRY_OPTIONS if k in attrs})
    except DurableConfigError as exc:
        raise DurableConfigError(f"{task_name}: {exc}") from None


def celery_retry_options(attrs: dict[str, Any]) -> dict[str, Any]:
    """Celery's retry options of a converted task (``autoretry_for``, ``max_retries``, ...) as ours.

    ``autoretry_for`` keeps its meaning: only those exceptions retry, steps and a body that
    fails outside any step alike, with Celery's defaults (no backoff unless ``retry_backoff``).
    """
    mapped: dict[str, Any] = {}
    for name in ("autoretry_for", "dont_autoretry_for"):
        if name in attrs:
            value = attrs[name]
            if not isinstance(value, list | tuple) or not all(
                isinstance(kind, type) and issubclass(kind, BaseException) for kind in value
            ):
                raise DurableConfigError(f"option {name!r} must be a tuple of exception classes, got {value!r}")
            mapped[name] = tuple(value)
    retry_kwargs = dict(attrs.get("retry_kwargs") or {})
    unknown = set(retry_kwargs) - {"max_retries", "countdown"}
    if unknown:
        raise DurableConfigError(f"option 'retry_kwargs' supports max_retries and countdown, not {sorted(unknown)}")
    max_retries = attrs.get("max_retries", retry_kwargs.get("max_retries"))
    if "max_retries" in attrs or "max_retries" in retry_kwargs:
        if "retries" in attrs:
            raise DurableConfigError("give either 'retries' or Celery's 'max_retries', not both")
        if max_retries is None:
            raise DurableConfigError("max_retries=None (retry forever) is not supported; give a number")
        mapped["retries"] = max_retries
    if "countdown" in retry_kwargs:
        mapped["default_retry_delay"] = retry_kwargs["countdown"]
    if mapped.get("autoretry_for") and "retry_backoff" not in attrs:
        mapped["retry_backoff"] = False  # Celery's default for autoretry_for
    return mapped


def _validate_concurrency(task_name: str, concurrency: Any, fn: Any) -> None:
    if concurrency is None:
        return
    entries = list(concurrency) if isinstance(concurrency, list | tuple) else [concurrency]
    if not entries or len(entries) > 2 or not all(isinstance(e, Concurrency) for e in entries):
        raise DurableConfigError(f"{task_name}: option 'concurrency' must be Concurrency(...) or a list of two")
    if len(entries) == 2 and (entries[0].key, entries[0].scope, entries[0].name) == (
        entries[1].key,
        entries[1].scope,
        entries[1].name,
    ):
        raise DurableConfigError(f"{task_name}: option 'concurrency' has two entries with the same key")
    for entry in entries:
        check_key_spec(task_name, "concurrency", entry.key, getattr(fn, "__func__", fn))
        check_key_spec(task_name, "concurrency fair_key", entry.fair_key, getattr(fn, "__func__", fn))
        if len(entries) == 2 and (entry.fair_key is not None or entry.when_full != "queue"):
            # The fair order and the full-key decision belong to one slot key.
            raise DurableConfigError(
                f"{task_name}: option 'concurrency' with fair_key or when_full takes one Concurrency entry, not two"
            )


def _validate_flow_options(task_name: str, attrs: dict[str, Any]) -> None:
    fn = attrs.get("run")
    fn = getattr(fn, "__func__", fn)
    expected: dict[str, type[Throttle | Debounce | Singleton]] = {
        "throttle": Throttle,
        "debounce": Debounce,
        "singleton": Singleton,
    }
    for option, cls in expected.items():
        value = attrs.get(option)
        if value is not None:
            if not isinstance(value, cls):
                raise DurableConfigError(f"{task_name}: option {option!r} must be {cls.__name__}(...), got {value!r}")
            check_key_spec(task_name, option, value.key, fn)
    rate_limit = attrs.get("rate_limit")
    if rate_limit is not None and not isinstance(rate_limit, str | int | float | RateLimit):
        raise DurableConfigError(f"{task_name}: option 'rate_limit' must be RateLimit(...) or Celery's rate string")
    if isinstance(rate_limit, RateLimit):
        check_key_spec(task_name, "rate_limit", rate_limit.key, fn)
    key = attrs.get("idempotency_key")
    if key is not None:
        if not (callable(key) or (isinstance(key, str) and key)):
            raise DurableConfigError(f"{task_name}: option 'idempotency_key' must be a parameter path or a callable")
        check_key_spec(task_name, "idempotency_key", key, fn)


#: Options a batched task cannot have: they act on one call's arguments, and a batch run has many calls.
NOT_WITH_BATCH = (
    "concurrency",
    "priority",
    "throttle",
    "debounce",
    "idempotency_key",
    "singleton",
    "on_event",
    "cancel_on",
)


def _validate_batch(task_name: str, attrs: dict[str, Any]) -> None:
    """``batch=Batch(...)``; the body takes one parameter, ``items`` (after ``self`` with ``bind=True``)."""
    batch = attrs.get("batch")
    if batch is None:
        return
    if not isinstance(batch, Batch):
        raise DurableConfigError(f"{task_name}: option 'batch' must be Batch(max_size=..., wait=..., key=...)")
    combined = [name for name in NOT_WITH_BATCH if attrs.get(name) is not None]
    if isinstance(attrs.get("rate_limit"), RateLimit):
        combined.append("rate_limit")
    if combined:
        raise DurableConfigError(f"{task_name}: option 'batch' cannot be combined with {', '.join(combined)}")
    run = attrs.get("run")
    fn = getattr(run, "__func__", run)
    if fn is None:
        return
    parameters = list(inspect.signature(fn).parameters.values())
    # ``bind=True`` in the decorator, or a method in a task class's body: the task comes first.
    is_method = "__module__" in attrs and inspect.isfunction(run)
    if (attrs.get("bind") or is_method) and parameters:
        parameters = parameters[1:]
    if [p.name for p in parameters] != ["items"] or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        raise DurableConfigError(
            f"{task_name}: a batched task's body takes one parameter, 'items' (the list of the calls' "
            f"keyword arguments), got ({', '.join(p.name for p in parameters)})"
        )


def _validate_suspension_options(task_name: str, attrs: dict[str, Any]) -> None:
    on_event = attrs.get("on_event")
    if on_event is not None:
        validate_event_name(on_event, f"{task_name}: option 'on_event'")
    cancel_on = attrs.get("cancel_on")
    if cancel_on is not None:
        rules = cancel_on if isinstance(cancel_on, list | tuple) else None
        if rules is None or not all(isinstance(rule, CancelOn) for rule in rules):
            raise DurableConfigError(f"{task_name}: option 'cancel_on' must be a list of CancelOn(...)")
    schedule = attrs.get("schedule")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise DurableConfigError(f"{task_name}: option 'schedule' must be Schedule(cron=... or every=...)")
    timeouts = attrs.get("timeouts")
    if timeouts is not None and not isinstance(timeouts, Timeouts):
        raise DurableConfigError(f"{task_name}: option 'timeouts' must be Timeouts(start=..., finish=...)")
    on_failure = attrs.get("on_failure")
    if on_failure is not None and not callable(on_failure) and not isinstance(on_failure, dict):
        raise DurableConfigError(f"{task_name}: option 'on_failure' must be a Celery signature")
    if isinstance(on_failure, dict) and not isinstance(on_failure.get("task"), str):
        raise DurableConfigError(f"{task_name}: option 'on_failure' must be a Celery signature (task.s())")
