"""``DurableTask``, the Celery task base class, and the ``durable_task`` decorator."""

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

from .. import clock, serialization, validation
from ..exceptions import DurableConfigError, DurableError, RetryAfter, RunCancelled, _StepFailed
from ..options import (
    CancelOn,
    Concurrency,
    Debounce,
    RateLimit,
    RetryPolicy,
    Singleton,
    Throttle,
    Timeouts,
    to_seconds,
)
from ..runtime import context
from ..runtime.events import Event, validate_event_name
from ..runtime.steps import StepContext
from . import handoff
from .publish import NUDGE_HEADER

logger = logging.getLogger("celery_durable")

# Options of SPEC §6 that later releases implement; declaring them now fails loudly.
NOT_YET_SUPPORTED: tuple[str, ...] = ()
RETRY_OPTIONS = ("retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "default_retry_delay")
# Publish options that are not stored with the run (they describe one publication).
TRANSIENT_OPTIONS = ("producer", "connection", "countdown", "eta", "add_to_parent", "publisher")


def validate_options(task_name: str, attrs: dict[str, Any]) -> None:
    """Raise ``DurableConfigError`` naming task and option for an invalid declaration."""
    for name in NOT_YET_SUPPORTED:
        if attrs.get(name) is not None:
            raise DurableConfigError(f"{task_name}: option {name!r} is not available in this version yet")
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
    from ..flow.keys import check_key_spec

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


def _validate_flow_options(task_name: str, attrs: dict[str, Any]) -> None:
    from ..flow.keys import check_key_spec

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


def _validate_suspension_options(task_name: str, attrs: dict[str, Any]) -> None:
    on_event = attrs.get("on_event")
    if on_event is not None:
        validate_event_name(on_event, f"{task_name}: option 'on_event'")
    cancel_on = attrs.get("cancel_on")
    if cancel_on is not None:
        rules = cancel_on if isinstance(cancel_on, list | tuple) else None
        if rules is None or not all(isinstance(rule, CancelOn) for rule in rules):
            raise DurableConfigError(f"{task_name}: option 'cancel_on' must be a list of CancelOn(...)")
    timeouts = attrs.get("timeouts")
    if timeouts is not None and not isinstance(timeouts, Timeouts):
        raise DurableConfigError(f"{task_name}: option 'timeouts' must be Timeouts(start=..., finish=...)")
    on_failure = attrs.get("on_failure")
    if on_failure is not None and not callable(on_failure) and not isinstance(on_failure, dict):
        raise DurableConfigError(f"{task_name}: option 'on_failure' must be a Celery signature")
    if isinstance(on_failure, dict) and not isinstance(on_failure.get("task"), str):
        raise DurableConfigError(f"{task_name}: option 'on_failure' must be a Celery signature (task.s())")


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
    _durable_exec_options: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        validate_options(str(cls.__dict__.get("name") or cls.__name__), dict(cls.__dict__))
        for name, value in celery_retry_options(dict(cls.__dict__)).items():
            # Celery's own autoretry wrapper would retry the whole run as a new message.
            setattr(cls, f"durable_{name}" if name.endswith("autoretry_for") else name, value)
        if "autoretry_for" in cls.__dict__:
            setattr(cls, "autoretry_for", ())  # noqa: B010  (Celery reads it with getattr)
        priority = cls.__dict__.get("priority")
        if priority is not None:  # ours: a head start in seconds, not a broker priority level
            cls.durable_priority = staticmethod(priority) if callable(priority) else priority
            cls.priority = None
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
        self._check_arguments(args, kwargs)
        run_id = validation.task_id(task_id, self.name) or uuid()
        wake_at = validation.wake_time(options.pop("countdown", None), options.pop("eta", None), clock.now())
        stored = {k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS and v is not None}
        for name, value in (("link", link), ("link_error", link_error), ("shadow", shadow)):
            if value is not None:
                stored[name] = value
        parent = self.app.current_worker_task
        if parent is not None and parent.request.id:
            stored.setdefault("parent_id", parent.request.id)
            stored.setdefault("root_id", parent.request.root_id or parent.request.id)
        from .. import runs
        from .publish import publish_on_commit

        nudge = runs.Nudge(
            run_id,
            self.name,
            self._encode_args(args),
            self._encode_kwargs(kwargs),
            serialization.dumps(stored, f"publish options of {self.name}"),
        )
        using = "default"
        if self._has_admission():
            admitted: AsyncResult = self._admit(nudge, args, kwargs, wake_at)  # type: ignore[type-arg]
            return admitted
        created = runs.create(
            run_id=run_id,
            task_name=self.name,
            args=nudge.args,
            kwargs=nudge.kwargs,
            options=nudge.options,
            wake_at=wake_at,
            deadlines=self._deadlines(),
            using=using,
        )
        if created and wake_at is None:
            publish_on_commit(self.app, [nudge], using)
        return self.AsyncResult(run_id)

    def _has_admission(self) -> bool:
        return any(
            option is not None
            for option in (
                self.idempotency_key,
                self.debounce,
                self.singleton,
                self.throttle,
                self.durable_rate_limit,
                self.concurrency,
                self.durable_priority,
            )
        )

    def _admit(self, nudge: Any, args: tuple[Any, ...], kwargs: dict[str, Any], wake_at: datetime | None) -> Any:
        """Intake through flow control (idempotency, debounce, singleton, rate limit, throttle)."""
        from django.db import transaction

        from .. import admission, cancellation, runs
        from ..api import after_cancel
        from ..models import Run, RunStatus
        from .publish import publish_on_commit

        with transaction.atomic():
            decision = admission.admit(self, nudge.run_id, args, kwargs, wake_at, nudge.args, nudge.kwargs)
            if decision.kind in ("existing", "debounced"):
                return self.AsyncResult(decision.run_id)
            if decision.kind == "skip":
                runs.create_skipped(
                    run_id=nudge.run_id,
                    task_name=self.name,
                    args=nudge.args,
                    kwargs=nudge.kwargs,
                    options=nudge.options,
                    reason=decision.reason,
                )
                transaction.on_commit(lambda: self._mark_skipped(nudge.run_id, decision.reason))
                return self.AsyncResult(nudge.run_id)
            replaced = None
            if decision.cancel is not None:
                try:
                    replaced = cancellation.cancel(decision.cancel, "replaced by a newer run (Singleton mode='cancel')")
                except DurableError:
                    replaced = None  # it finished meanwhile
            from .. import slots

            priority = slots.priority_of(self, args, kwargs)
            limits = slots.slot_limits(self, args, kwargs)
            keys = sorted(limits)
            backlogged = bool(limits) and decision.wake_at is None
            created = runs.create(
                run_id=nudge.run_id,
                task_name=self.name,
                args=nudge.args,
                kwargs=nudge.kwargs,
                options=nudge.options,
                wake_at=decision.wake_at,
                deadlines=self._deadlines(),
                extra={
                    "priority": priority,
                    "backlog_at": slots.backlog_time(priority),
                    "slot_key1": keys[0] if keys else None,
                    "slot_key2": keys[1] if len(keys) > 1 else None,
                    "status": RunStatus.PENDING if backlogged else RunStatus.QUEUED,
                },
            )
            if created and backlogged:
                # Admitted now if every slot is free; otherwise it waits in the backlog.
                if slots.acquire(nudge.run_id, dict(limits)):
                    Run.objects.filter(id=nudge.run_id).update(status=RunStatus.QUEUED, published_at=clock.now())
                    publish_on_commit(self.app, [nudge])
            elif created and decision.wake_at is None:
                publish_on_commit(self.app, [nudge])
        if replaced is not None:
            after_cancel(replaced)
        return self.AsyncResult(nudge.run_id)

    def _mark_skipped(self, run_id: str, reason: str) -> None:
        from ..exceptions import RunSkipped

        self.backend.mark_as_failure(run_id, RunSkipped(reason))

    def _deadlines(self) -> dict[str, Any]:
        if self.timeouts is None:
            return {}
        now = clock.now()
        deadlines = {}
        if self.timeouts.start is not None:
            deadlines["start_by"] = now + timedelta(seconds=to_seconds(self.timeouts.start, "Timeouts.start"))
        if self.timeouts.finish is not None:
            deadlines["finish_by"] = now + timedelta(seconds=to_seconds(self.timeouts.finish, "Timeouts.finish"))
        return deadlines

    def start_for_event(self, event: Event) -> list[Any]:
        """Record a run of this ``on_event`` task for ``event``; return its nudge (publish after commit)."""
        from .. import runs

        run_id = uuid()
        kwargs = serialization.dumps({"event": event.to_json()}, f"event argument of {self.name}")
        created = runs.create(
            run_id=run_id, task_name=self.name, args="[]", kwargs=kwargs, options="{}", deadlines=self._deadlines()
        )
        return [runs.Nudge(run_id, self.name, "[]", kwargs, "{}")] if created else []

    def call_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments as the task body receives them (defaults filled in), for key callables."""
        bound = inspect.signature(self.run).bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.args), dict(bound.kwargs)

    def bound_arguments(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The run's arguments by parameter name, as the task body receives them."""
        bound = inspect.signature(self.run).bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.typing:
            return
        try:
            inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    def _encode_args(self, args: tuple[Any, ...]) -> str:
        return serialization.dumps_arguments(list(args), self.name, _max_argument_bytes())

    def _encode_kwargs(self, kwargs: dict[str, Any]) -> str:
        return serialization.dumps_arguments(kwargs, self.name, _max_argument_bytes())

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
        from .publish import publish_all

        super().after_return(status, retval, task_id, args, kwargs, einfo)
        promoted = handoff.take_promoted(self)
        if promoted:
            from ..conf import get_settings

            publish_all(self.app, handoff.run_here(self, promoted, get_settings().INLINE_HANDOFF_RUNS))

    def execute_run(self, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Execute run ``run_id`` in this process: return its value, or raise its error or ``Ignore``."""
        from .. import execution, runs
        from ..models import FINISHED_STATUSES
        from .publish import publish_all

        if self.concurrency is not None:
            from .. import slots

            limits = slots.slot_limits(self, args, kwargs)
        else:
            limits = None
        outcome = execution.execute(
            slot_limits=limits, run_id=run_id, task_name=self.name, body=self._body(), policy=self.retry_policy()
        )
        status, value = runs.outcome_of(run_id) if outcome.kind == "dropped" else (None, None)
        if status in FINISHED_STATUSES:
            # A redelivery of a run that already ended (its worker may have died before the
            # result backend heard of it): answer with the stored outcome again.
            if status == "completed":
                return value
            if status != "failed":  # a failure's original error type is in the backend already
                raise _stored_error(str(status), value)
        if status == runs.MISSING:
            # Published by a producer that did not record the run (e.g. send_task from
            # another codebase): record it from the message and execute it.
            runs.create(
                run_id=run_id,
                task_name=self.name,
                args=self._encode_args(args),
                kwargs=self._encode_kwargs(kwargs),
                options="{}",
            )
            outcome = execution.execute(
                run_id=run_id, task_name=self.name, body=self._body(), policy=self.retry_policy()
            )
        from .publish import publish_children

        publish_all(self.app, outcome.nudges)
        publish_children(self.app, run_id, outcome.children)
        if self.concurrency is not None and outcome.kind != "dropped":
            promoted = self._release_slots(run_id)
            if outcome.kind in ("completed", "failed", "cancelled") and self._hands_off_inline():
                handoff.stash(self, promoted)  # run here once the result is stored (after_return)
            else:
                publish_all(self.app, promoted)
        if outcome.kind == "completed":
            return outcome.value
        if outcome.kind == "failed":
            assert outcome.error is not None
            self._call_on_failure(run_id)
            raise outcome.error
        if outcome.kind == "cancelled":
            from ..api import after_cancel
            from ..cancellation import Cancellation

            after_cancel(Cancellation(cancelled=outcome.cancelled))
            raise RunCancelled(f"run {run_id} was cancelled")
        raise Ignore()

    def _release_slots(self, run_id: str) -> list[Any]:
        from django.db import DatabaseError

        from .. import slots

        try:
            return slots.release(run_id)
        except DatabaseError:
            # The services' backstop gives the slots back and promotes the backlog.
            logger.warning("durable run %s: releasing its slots failed; the backstop will", run_id, exc_info=True)
            return []

    def _hands_off_inline(self) -> bool:
        """Whether promoted runs wait for ``after_return`` (a worker delivery, inline hand-off on)."""
        from ..conf import get_settings

        return bool(self.request.delivery_info) and get_settings().INLINE_HANDOFF_RUNS > 0

    def _body(self) -> Callable[..., Any]:
        if self.on_event is None:
            return self.run

        def with_event(*args: Any, **kwargs: Any) -> Any:
            if isinstance(kwargs.get("event"), dict):
                kwargs["event"] = Event.from_json(kwargs["event"])
            return self.run(*args, **kwargs)

        return with_event

    def _call_on_failure(self, run_id: str) -> None:
        if self.durable_on_failure is None:
            return
        from celery import signature

        try:
            signature(self.durable_on_failure, app=self.app).apply_async((run_id,))
        except Exception:
            logger.exception("durable run %s: on_failure signature could not be sent", run_id)

    def _run_without_checkpoints(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A direct call (``task(...)``) or eager mode: steps run inline, nothing is stored."""
        from ..runtime.memory import ephemeral_context

        token = context.activate(ephemeral_context(self.name, self.retry_policy()))
        try:
            return self.run(*args, **kwargs)
        except _StepFailed as failed:
            raise failed.error from None
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
    from ..exceptions import RunSkipped

    message = (error or {}).get("message", status)
    if status == "cancelled":
        return RunCancelled(message)
    return RunSkipped(message)


def is_durable_task_name(name: str) -> bool | None:
    """Whether the registered task ``name`` is durable; ``None`` if it is not registered."""
    from celery import current_app

    task = current_app.tasks.get(name)
    return None if task is None else isinstance(task, DurableTask)


def _max_argument_bytes() -> int:
    from ..conf import get_settings

    return get_settings().MAX_ARGUMENT_BYTES


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
