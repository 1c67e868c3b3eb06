"""The error tree of celery-durable.

Every public error derives from :class:`DurableError` and survives ``pickle`` (Celery
moves exceptions between processes). Internal control-flow signals derive from
``BaseException`` so that a user's ``except Exception`` inside a task cannot swallow them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


class DurableError(Exception):
    """Base class of every error raised by celery-durable."""


class DurableConfigError(DurableError, ValueError):
    """A durable task or option was declared with an invalid value."""


class ScheduleError(DurableConfigError):
    """A ``Schedule`` is invalid, or a schedule operation (backfill, trigger) cannot be done."""


class SerializationError(DurableError, TypeError):
    """A value could not be stored as JSON (argument, step output or result)."""


class DirectCallError(DurableError, RuntimeError):
    """A durable task that suspends (sleeps, waits, starts child runs) was called directly.

    ``task(...)`` and Celery's eager mode run the body in-process with no run row, so a
    suspension could never resume: call ``task.delay(...)``, or test with
    ``celery_durable.testing``. Raised before any step runs when the body's source shows a
    suspending step, otherwise when one is reached.
    """

    def __init__(self, task_name: str, method: str, line: int | None = None) -> None:
        super().__init__(task_name, method, line)  # the args rebuild it (pickle, Celery's backends)
        self.task_name = task_name
        self.method = method
        self.line = line

    def __str__(self) -> str:
        where = f" (step.{self.method} at line {self.line})" if self.line else f" (step.{self.method})"
        return (
            f"{self.task_name} was called directly, and its body suspends{where}: only a durable run "
            f"can sleep, wait or start child runs. Call {self.task_name.rsplit('.', 1)[-1]}.delay(...) "
            f"instead, or run it in a test with celery_durable.testing (the `durable` fixture)."
        )


class NotInDurableRun(DurableError, RuntimeError):
    """``step`` was used outside the execution of a durable run."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "step is only usable while a durable task executes "
            "(declare the task with @durable_task or base=DurableTask)"
        )


class StepIdError(DurableError, ValueError):
    """A step id is empty, too long, or uses the reserved occurrence separator '#'."""


class StepNestingError(DurableError, RuntimeError):
    """A step was started inside the body of another step."""


class StepNotFound(DurableError, LookupError):
    """The run has no step with that id (e.g. ``replay(run_id, from_step=...)``)."""

    def __init__(self, run_id: str, step_id: str) -> None:
        super().__init__(run_id, step_id)
        self.run_id = run_id
        self.step_id = step_id

    def __str__(self) -> str:
        return f"run {self.run_id!r} has no step {self.step_id!r}"


class NonRetriableError(DurableError):
    """Raise inside a step to fail the run at once, without retries."""


class RetryAfter(DurableError):
    """Raise inside a step to retry it after ``delay`` (seconds or ``timedelta``).

    The retry counts against the task's ``retries`` budget.
    """

    def __init__(self, delay: float | timedelta, message: str = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise DurableConfigError(f"RetryAfter delay must be >= 0, got {delay!r}")
        super().__init__(delay, message)
        self.delay = seconds
        self.message = message

    def __str__(self) -> str:
        return self.message or f"retry after {self.delay:g}s"


class NonDeterminismError(DurableError):
    """A run reached a stored step whose kind differs from the code now running."""

    def __init__(self, step_id: str, stored: str, current: str) -> None:
        super().__init__(step_id, stored, current)
        self.step_id = step_id
        self.stored = stored
        self.current = current

    def __str__(self) -> str:
        return (
            f"step {self.step_id!r} was recorded as {self.stored} but the code now "
            f"reaches it as {self.current}; a deploy changed the task's steps "
            f"(rename the step id to start it afresh)"
        )


class StepTimeout(DurableError):
    """A step ran longer than its ``timeout``: raised inside the step, then retried per its policy."""

    def __init__(self, step_id: str, seconds: float) -> None:
        super().__init__(step_id, seconds)
        self.step_id = step_id
        self.seconds = seconds

    def __str__(self) -> str:
        return f"step {self.step_id!r} exceeded its timeout of {self.seconds:g}s"


class RunNotFound(DurableError, LookupError):
    """No run with that id exists."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"no durable run with id {self.run_id!r}"


class RunStateError(DurableError):
    """The run is not in a state that allows this operation (e.g. replaying a running run)."""

    def __init__(self, run_id: str, status: str, operation: str, why: str = "") -> None:
        super().__init__(run_id, status, operation, why)
        self.run_id = run_id
        self.status = status
        self.operation = operation
        self.why = why

    def __str__(self) -> str:
        return f"cannot {self.operation} run {self.run_id!r}: {self.why or f'its status is {self.status!r}'}"


class InvalidMetadata(DurableError, ValueError):
    """``step.set_metadata`` got a field name that is not an identifier, or a value that is not small JSON."""


class RunSkipped(DurableError):
    """The run was skipped by flow control (rate limit or singleton)."""


class RunCancelled(DurableError):
    """The run was cancelled."""


class ChildRunFailed(DurableError):
    """A child run invoked with ``step.invoke`` or ``step.gather`` failed."""

    def __init__(self, run_id: str, error_type: str = "", message: str = "") -> None:
        super().__init__(run_id, error_type, message)
        self.run_id = run_id
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"child run {self.run_id!r} failed: {self.error_type}: {self.message}"


class TaskNotRegistered(DurableError):
    """A stored run names a task that this worker does not have (e.g. after a deploy)."""

    def __init__(self, task_name: str) -> None:
        super().__init__(task_name)
        self.task_name = task_name

    def __str__(self) -> str:
        return f"task {self.task_name!r} is no longer registered in this deployment; the run cannot continue"


class WorkerLost(DurableError):
    """The run's worker died more than ``MAX_RECOVERIES`` times; the run was failed."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"the worker of run {self.run_id!r} was lost too many times (CELERY_DURABLE['MAX_RECOVERIES'])"


class DurableNotMigrated(DurableError, RuntimeError):
    """celery-durable's tables are missing or out of date: run ``python manage.py migrate``."""


class StepOutputTooLarge(SerializationError):
    """A step output exceeds ``MAX_STEP_OUTPUT_BYTES``."""


# --- internal control flow (never exported, never caught by ``except Exception``) ---


class _Interrupt(BaseException):
    """Unwinds a durable execution without failing it."""


class _Suspend(_Interrupt):
    """The run's state is committed; the Celery task ends and the run resumes later."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class _LeaseLost(_Interrupt):
    """Another execution owns the run now; this one must stop without writing."""


class _Cancelled(_Interrupt):
    """The run was cancelled while executing; it stops at this step boundary."""


class _StepFailed(_Interrupt):
    """A step body raised: retry it after ``retry_in`` seconds, or (``None``) fail the run."""

    def __init__(self, step_id: str, error: BaseException, attempts: int, retry_in: float | None) -> None:
        super().__init__(step_id, error, attempts, retry_in)
        self.step_id = step_id
        self.error = error
        self.attempts = attempts
        self.retry_in = retry_in
