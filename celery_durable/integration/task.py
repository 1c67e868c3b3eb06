"""``DurableTask``, the Celery task base class, and the ``durable_task`` decorator.

The class declares options and publishes; executing a delivered run is the engine's
(:func:`celery_durable.engine.execution.deliver`), as Celery keeps ``Task`` apart from
its tracer.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from celery.app.task import extract_exec_options  # type: ignore[attr-defined]
from celery.contrib.django.task import DjangoTask
from celery.exceptions import Ignore
from celery.result import AsyncResult
from celery.utils import uuid
from django.db import transaction

from .. import clock, serialization, start_time, validation
from ..conf import get_settings
from ..dbcheck import translated
from ..engine.declaration import celery_retry_options, validate_options
from ..engine.spec import TaskSpec
from ..exceptions import (
    DirectCallError,
    DurableConfigError,
    RetryAfter,
    RunCancelled,
    RunSkipped,
    _StepFailed,
    _Suspend,
)
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
from ..runtime import context
from ..runtime.direct import suspending_steps
from ..runtime.memory import ephemeral_context
from ..runtime.steps import StepContext
from ..states import RunStatus
from ..store.messages import RunMessage
from . import batch_results, handoff  # guard: connects the worker's startup check for a missing install(app)
from .publish import NUDGE_HEADER, publish_all
from .registry import CeleryPublisher, CeleryRegistry, call_on_failure
from .timetable import check_schedule

logger = logging.getLogger("celery_durable")

# Publish options that are not stored with the run (they describe one publication).
TRANSIENT_OPTIONS = ("producer", "connection", "countdown", "eta", "add_to_parent", "publisher")


class DurableTask(DjangoTask):  # type: ignore[type-arg]
    """Base class of durable tasks: runs checkpointed in the Django database.

    ``@app.task(base=DurableTask, ...)``, ``@shared_task(base=DurableTask, ...)`` and
    ``@durable_task(...)`` are equivalent.
    """

    acks_late = True
    reject_on_worker_lost = True
    retries = 3
    retry_backoff: bool | int | float = True
    retry_backoff_max: int | float = 600
    retry_jitter = True
    on_event: str | None = None
    cancel_on: list[CancelOn] | None = None
    timeouts: Timeouts | None = None
    schedule: Schedule | None = None
    # ``on_failure=signature`` of the decorator; Celery's own ``on_failure`` is a handler method.
    durable_on_failure: dict[str, Any] | None = None
    idempotency_key: Any = None
    debounce: Debounce | None = None
    singleton: Singleton | None = None
    throttle: Throttle | None = None
    # ``rate_limit=RateLimit(...)``; a plain string keeps Celery's per-worker meaning in ``rate_limit``.
    durable_rate_limit: RateLimit | None = None
    concurrency: Concurrency | list[Concurrency] | None = None
    # ``priority=`` (-600..600 s or a callable); Celery's own ``priority`` is the message priority.
    durable_priority: int | Callable[..., int] | None = None
    # Celery's ``autoretry_for`` / ``dont_autoretry_for``, applied by our retry policy.
    durable_autoretry_for: tuple[type[BaseException], ...] | None = None
    durable_dont_autoretry_for: tuple[type[BaseException], ...] = ()
    batch: Batch | None = None
    _durable_exec_options: dict[str, Any] | None = None
    _durable_spec: TaskSpec | None = None
    _durable_signature: tuple[Any, inspect.Signature] | None = None  # (run, its signature)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        validate_options(str(cls.__dict__.get("name") or cls.__name__), dict(cls.__dict__))
        if cls.__dict__.get("schedule") is not None:
            check_schedule(
                str(cls.__dict__.get("name") or cls.__name__), cls.__dict__["schedule"], cls.__dict__.get("run")
            )
        for name, value in celery_retry_options(dict(cls.__dict__)).items():
            # Celery's own autoretry wrapper would retry the whole run as a new message.
            setattr(cls, f"durable_{name}" if name.endswith("autoretry_for") else name, value)
        if "autoretry_for" in cls.__dict__:
            setattr(cls, "autoretry_for", ())  # noqa: B010  (Celery reads it with getattr)
        if "priority" in cls.__dict__:  # ours: a head start in seconds, not a broker priority level
            priority = cls.__dict__["priority"]
            # Removed, not set to None: Celery warns about any ``priority`` in a task class's dict.
            delattr(cls, "priority")
            if priority is not None:
                cls.durable_priority = staticmethod(priority) if callable(priority) else priority
        key = cls.__dict__.get("idempotency_key")
        if callable(key) and not isinstance(key, staticmethod):  # a function attribute would bind self
            cls.idempotency_key = staticmethod(key)
        rate_limit = cls.__dict__.get("rate_limit")
        if isinstance(rate_limit, RateLimit):  # Celery's worker reads rate_limit as a rate string
            cls.durable_rate_limit = rate_limit
            cls.rate_limit = None
        on_failure = cls.__dict__.get("on_failure")
        if isinstance(on_failure, dict):  # a signature given as an option, not a method override
            cls.durable_on_failure = on_failure
            delattr(cls, "on_failure")

    @property
    def step(self) -> StepContext:
        """The step context of the running execution (``bind=True`` tasks)."""
        return context.current()

    @property
    def durable_spec(self) -> TaskSpec:
        """The task as the engine sees it: its body and validated options (built once)."""
        if self._durable_spec is None or self._durable_spec.fn != self.run:
            concurrency = self.concurrency or ()
            entries = tuple(concurrency) if isinstance(concurrency, list | tuple) else (concurrency,)
            self._durable_spec = TaskSpec(
                name=self.name,
                fn=self.run,
                policy=self.retry_policy(),
                concurrency=entries,
                priority=self.durable_priority,
                idempotency_key=self.idempotency_key,
                debounce=self.debounce,
                singleton=self.singleton,
                throttle=self.throttle,
                rate_limit=self.durable_rate_limit,
                timeouts=self.timeouts,
                on_event=self.on_event,
                cancel_on=tuple(self.cancel_on or ()),
                on_failure=self.durable_on_failure,
                schedule=self.schedule,
                batch=self.batch,
            )
        return self._durable_spec

    def retry_policy(self) -> RetryPolicy:
        """The per-step retry policy of this task."""
        return RetryPolicy(
            retries=self.retries,
            retry_backoff=self.retry_backoff,
            retry_backoff_max=self.retry_backoff_max,
            retry_jitter=self.retry_jitter,
            default_retry_delay=self.default_retry_delay,
            autoretry_for=self.durable_autoretry_for,
            dont_autoretry_for=self.durable_dont_autoretry_for,
        )

    # --- intake -------------------------------------------------------------------------

    def _get_exec_options(self) -> dict[str, Any]:
        # ``task_default_priority`` is for plain tasks: a durable run's broker level comes
        # from its ``priority=`` through the router of install(app) (or an explicit option).
        if self._durable_exec_options is None:  # cached, as Celery caches its own
            options = dict(extract_exec_options(self))
            options.pop("priority", None)
            self._durable_exec_options = options
        return self._durable_exec_options

    @translated
    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> AsyncResult:  # type: ignore[type-arg]
        """Record the run, then publish it when the current transaction commits."""
        headers = options.get("headers") or {}
        if headers.get(NUDGE_HEADER) or self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        if self.batch is not None:
            return self._add_to_batch(args, kwargs, task_id, link, link_error, options)
        self._check_arguments(args, kwargs)
        run_id = validation.task_id(task_id, self.name) or uuid()
        wake_at = start_time.wake_time(options.pop("countdown", None), options.pop("eta", None), clock.now())
        stored = {k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS and v is not None}
        for name, value in (("link", link), ("link_error", link_error), ("shadow", shadow)):
            if value is not None:
                stored[name] = value
        parent = self.app.current_worker_task
        if parent is not None and parent.request.id:
            stored.setdefault("parent_id", parent.request.id)
            stored.setdefault("root_id", parent.request.root_id or parent.request.id)
        from ..engine import intake  # the store's modules need Django's app registry: not at import time

        args_json, kwargs_json = intake.encode_arguments(self.name, args, kwargs)
        options_json = serialization.dumps(stored, f"publish options of {self.name}")
        message = RunMessage(run_id, self.name, args_json, kwargs_json, options_json)
        recorded = intake.record(self.durable_spec, message, args, kwargs, wake_at, CeleryPublisher(self.app))
        if recorded.skipped is not None:
            reason = recorded.skipped
            transaction.on_commit(lambda: self.backend.mark_as_failure(run_id, RunSkipped(reason)))
        return self.AsyncResult(recorded.run_id)

    def _add_to_batch(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        link: Any,
        link_error: Any,
        options: dict[str, Any],
    ) -> AsyncResult:  # type: ignore[type-arg]
        """Record one call of a batched task; its result is the result of the batch it joins."""
        from ..engine import batching, intake  # the store's modules need Django's app registry

        batching.check_call(self.durable_spec, args, {**options, "link": link, "link_error": link_error})
        call_id = validation.task_id(task_id, self.name) or uuid()
        _, kwargs_json = intake.encode_arguments(self.name, (), kwargs)
        stored = {k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS and v is not None}
        options_json = serialization.dumps(stored, f"publish options of {self.name}")
        batching.record(self.durable_spec, call_id, kwargs, kwargs_json, options_json, CeleryPublisher(self.app))
        return self.AsyncResult(call_id)

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.typing:
            return
        cached = self._durable_signature
        if cached is None or cached[0] != self.run:  # inspect.signature costs ~50 µs a call
            cached = self._durable_signature = (self.run, inspect.signature(self.run))
        try:
            cached[1].bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    # --- execution ----------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Execute the run named by the message's task id (the worker calls this)."""
        request = self.request
        if request.called_directly or request.is_eager:
            return self._run_without_checkpoints(args, kwargs)
        return self.execute_run(str(request.id), args, kwargs)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery calls this once the result is stored: run promoted runs of this task here.

        Subclasses that override it must call ``super().after_return(...)``.
        """
        super().after_return(status, retval, task_id, args, kwargs, einfo)
        promoted = handoff.take_promoted(self)
        if promoted:
            publish_all(self.app, handoff.run_here(self, promoted, get_settings().INLINE_HANDOFF_RUNS))

    def execute_run(
        self, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], claimed: RunMessage | None = None
    ) -> Any:
        """Execute run ``run_id`` in this process: return its value, or raise its error or ``Ignore``.

        ``claimed``: its message from a hand-over that claimed it for this process (inline hand-off).
        """
        from ..engine.execution import deliver  # not at import time: it needs Django's app registry

        hands_off_inline = handoff.budget_after(self) > 0  # promoted runs may execute here, after this one
        delivery = deliver(
            run_id,
            args,
            kwargs,
            self.durable_spec,
            CeleryRegistry(self.app),
            CeleryPublisher(self.app),
            claimed=claimed,
            claim_next=hands_off_inline,
        )
        if self.batch is not None:
            batch_results.store_for_calls(self.app, run_id, delivery)
        if delivery.ended is not None:
            status, value = delivery.ended
            if status == RunStatus.COMPLETED:
                return value
            if status != RunStatus.FAILED:  # a failure's original error type is in the backend already
                raise _stored_error(str(status), value)
        outcome = delivery.outcome
        if delivery.promoted:
            if outcome.kind in ("completed", "failed", "cancelled") and hands_off_inline:
                handoff.stash(self, delivery.promoted)  # run here once the result is stored (after_return)
            else:
                publish_all(self.app, delivery.promoted)
        if outcome.kind == "completed":
            return outcome.value
        if outcome.kind == "failed":
            assert outcome.error is not None
            call_on_failure(self.app, self.durable_spec, run_id)
            raise outcome.error
        if outcome.kind == "cancelled":
            raise RunCancelled(f"run {run_id} was cancelled")
        raise Ignore()

    def _run_without_checkpoints(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A direct call (``task(...)``) or eager mode: steps run inline, nothing is stored.

        A body that suspends cannot run so: :class:`DirectCallError`, before any step when
        its source shows the suspending step.
        """
        found = suspending_steps(self.run)
        if found:
            raise DirectCallError(self.name, *found[0])
        token = context.activate(ephemeral_context(self.name, self.retry_policy()))
        try:
            return self.run(*args, **kwargs)
        except _StepFailed as failed:
            raise failed.error from None
        except _Suspend as suspend:
            method = {"wait": "wait_for_event", "children": "invoke/gather/chain"}.get(suspend.reason, suspend.reason)
            raise DirectCallError(self.name, method) from None
        finally:
            context.deactivate(token)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Any = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Inside a durable run, retry the current step: the same as ``raise RetryAfter(countdown)``."""
        delay = countdown if countdown is not None else self.default_retry_delay
        if eta is not None:
            delay = max(0.0, (eta - clock.now()).total_seconds())
        raise RetryAfter(delay, str(exc) if exc else "")


def _stored_error(status: str, error: dict[str, Any] | None) -> Exception:
    """The error of a cancelled or skipped run, from its stored record."""
    message = (error or {}).get("message", status)
    if status == "cancelled":
        return RunCancelled(message)
    return RunSkipped(message)


def durable_task(*args: Any, **options: Any) -> Any:
    """Declare a durable task: ``shared_task(base=DurableTask, **options)``.

    Usable bare (``@durable_task``) or with options (``@durable_task(retries=5)``).
    Invalid options raise :class:`DurableConfigError` here, at import time.
    """

    def decorate(fun: Callable[..., Any]) -> Any:
        name = options.get("name") or f"{fun.__module__}.{fun.__name__}"
        validate_options(name, {**options, "run": fun})
        for option in ("retry_backoff_max", "default_retry_delay"):  # Celery reads them as seconds
            if isinstance(options.get(option), timedelta):
                options[option] = options[option].total_seconds()
        # Celery's retry options become ours (not Celery's autoretry wrapper, which would
        # retry the run as a new message): see celery_retry_options.
        mapped = celery_retry_options(options)
        for celery_option in ("autoretry_for", "dont_autoretry_for", "retry_kwargs", "max_retries"):
            options.pop(celery_option, None)
        for option, value in mapped.items():
            options[f"durable_{option}" if option.endswith("autoretry_for") else option] = value
        base = options.pop("base", DurableTask)
        if not (isinstance(base, type) and issubclass(base, DurableTask)):
            raise DurableConfigError(f"{name}: base must be DurableTask or a subclass of it")
        return shared_task(base=base, **options)(fun)  # type: ignore[no-untyped-call]

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    if args:
        raise DurableConfigError("durable_task takes keyword options only")
    return decorate
