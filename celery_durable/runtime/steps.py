"""The step context of one execution: memoized replay of checkpoints, retries, determinism."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from .. import serialization
from ..exceptions import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfter,
    SerializationError,
    StepIdError,
    StepNestingError,
    _StepFailed,
)
from ..options import RetryPolicy
from ..validation import storable
from .suspension import SuspendingSteps

T = TypeVar("T")

# Set by ``celery_durable.testing`` to inject step failures: (task name, step id) -> error.
fault_hook: Callable[[str, str], BaseException | None] | None = None

MAX_STEP_ID_LENGTH = 200
OCCURRENCE_SEPARATOR = "#"
# The failed attempts of a body that retries as a whole (``autoretry_for``); no step id can be it.
BODY_STEP = "#body"


@dataclass
class StoredStep:
    """A checkpoint as loaded at the start of an execution."""

    step_id: str
    kind: str
    status: str  # "completed", "failed" or "pending"
    output: str | None
    attempts: int


class CheckpointWriter(Protocol):
    """Where a step context writes checkpoints (the ORM store, or an in-memory one in tests)."""

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Record a completed step (fenced: raises ``_LeaseLost`` if the run changed hands)."""

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction that wraps an atomic step's body and its checkpoint."""

    def complete_pending(self, step_id: str, output: str) -> None:
        """Mark a pending step (sleep, wait, child runs) completed with ``output`` (fenced)."""

    def find_event(self, name: str, match: dict[str, Any] | None, exclude: set[str]) -> dict[str, Any] | None:
        """The oldest event named ``name`` received since the run started that matches, if any."""

    def children(self, step_id: str) -> list[dict[str, Any]]:
        """The child runs of a step, in order: ``{id, status, result, error}`` each."""

    def cancel_requested(self) -> bool:
        """Whether a cancellation of this run is known (checked at step boundaries, no query)."""

    def send_event(self, name: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
        """Send an event with this id (deduplicated) and return it as JSON."""


def validate_step_id(step_id: object) -> str:
    """Return ``step_id`` if it is usable, or raise :class:`StepIdError`."""
    if not isinstance(step_id, str) or not step_id.strip():
        raise StepIdError(f"a step id must be a non-empty str, got {step_id!r}")
    if OCCURRENCE_SEPARATOR in step_id:
        raise StepIdError(
            f"step id {step_id!r} contains {OCCURRENCE_SEPARATOR!r}, which is reserved for "
            f"automatic occurrence suffixes"
        )
    if len(step_id) > MAX_STEP_ID_LENGTH:
        raise StepIdError(f"step id {step_id[:40]!r}... is longer than {MAX_STEP_ID_LENGTH} characters")
    if not storable(step_id):  # no database stores it: the checkpoint write would fail
        raise StepIdError(f"step id {step_id!r} contains a NUL character or a lone surrogate")
    return step_id


class StepContext(SuspendingSteps):
    """What ``step`` (and ``self.step``) is while a durable run executes."""

    def __init__(
        self,
        *,
        run_id: str,
        task_name: str,
        checkpoints: dict[str, StoredStep],
        writer: CheckpointWriter,
        policy: RetryPolicy,
        clock: Callable[[], datetime],
        max_output_bytes: int,
    ) -> None:
        self._run_id = run_id
        self._task_name = task_name
        self._checkpoints = checkpoints
        self._writer = writer
        self._policy = policy
        self._clock = clock
        self._max_output_bytes = max_output_bytes
        self._occurrences: dict[str, int] = {}
        self._attempt = 1
        self._current: tuple[str, str] | None = None  # (step id as given, with occurrence suffix)
        self.replayed: list[str] = []
        self.executed: list[str] = []

    @property
    def run_id(self) -> str:
        """The run id (also the Celery task id of every publication of this run)."""
        return self._run_id

    @property
    def attempt(self) -> int:
        """The attempt number of the current (or last) step, starting at 1."""
        return self._attempt

    def idempotency_key(self, step_id: str) -> str:
        """A key stable across retries and re-executions, for external APIs (e.g. Stripe).

        Inside the body of ``step_id`` it names that step; elsewhere it names the next
        occurrence of ``step_id`` (so in a loop each iteration gets its own key).
        """
        validate_step_id(step_id)
        if self._current is not None and self._current[0] == step_id:
            return f"{self._run_id}:{self._current[1]}"
        count = self._occurrences.get(step_id, 0) + 1
        return f"{self._run_id}:{step_id if count == 1 else f'{step_id}{OCCURRENCE_SEPARATOR}{count}'}"

    def _occurrence(self, step_id: str) -> str:
        validate_step_id(step_id)
        count = self._occurrences.get(step_id, 0) + 1
        self._occurrences[step_id] = count
        return step_id if count == 1 else f"{step_id}{OCCURRENCE_SEPARATOR}{count}"

    def _stored(self, sid: str, kind: str, description: str) -> StoredStep | None:
        stored = self._checkpoints.get(sid)
        if stored is not None and stored.kind != kind:
            raise NonDeterminismError(sid, stored.kind, description)
        return stored

    def run(self, step_id: str, fn: Callable[..., T], *args: Any, atomic: bool = False, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` once per run and return its (JSON) result.

        A later execution of the same run returns the checkpointed value without calling
        ``fn``. With ``atomic=True`` the body runs in ``transaction.atomic()`` together
        with its checkpoint.
        """
        if not callable(fn):
            raise TypeError(f"step.run({step_id!r}, ...) needs a callable, got {fn!r}")
        self._boundary()
        if self._current is not None:
            raise StepNestingError(
                f"step.run({step_id!r}) was called inside the body of step {self._current[1]!r}; "
                f"steps cannot be nested (call it after the outer step returns)"
            )
        sid = self._occurrence(step_id)
        stored = self._stored(sid, "run", f"step.run({getattr(fn, '__qualname__', fn)!r})")
        if stored is not None and stored.status == "completed":
            self.replayed.append(sid)
            value: T = serialization.loads(stored.output or "null")
            return value
        attempts = (stored.attempts if stored is not None else 0) + 1
        self._attempt = attempts
        started_at = self._clock()
        self._current = (step_id, sid)
        try:
            fault = fault_hook(self._task_name, sid) if fault_hook is not None else None
            if fault is not None:
                raise fault
            if atomic:
                with self._writer.atomic():
                    output = self._encode(sid, fn(*args, **kwargs))
                    self._writer.save_output(sid, "run", output, attempts, started_at, stored is not None)
            else:
                output = self._encode(sid, fn(*args, **kwargs))
        except (NonRetriableError, SerializationError, StepNestingError, StepIdError, NonDeterminismError) as exc:
            # Retrying cannot help: a declared permanent failure or a programming error.
            raise _StepFailed(sid, exc, attempts, None) from exc
        except RetryAfter as exc:
            raise _StepFailed(sid, exc, attempts, exc.delay if self._policy.should_retry(attempts) else None) from exc
        except Exception as exc:
            retrying = self._policy.retries_on(exc) and self._policy.should_retry(attempts)
            raise _StepFailed(sid, exc, attempts, self._policy.delay(attempts) if retrying else None) from exc
        finally:
            self._current = None
        if not atomic:
            self._writer.save_output(sid, "run", output, attempts, started_at, stored is not None)
        self._checkpoints[sid] = StoredStep(sid, "run", "completed", output, attempts)
        self.executed.append(sid)
        # Return the decoded JSON so the first execution sees exactly what a replay sees.
        result: T = serialization.loads(output)
        return result

    def _encode(self, sid: str, value: Any) -> str:
        return serialization.dumps_value(value, f"output of step {sid!r} of {self._task_name}", self._max_output_bytes)

    def steps(self) -> Iterator[StoredStep]:
        """The checkpoints known to this execution (loaded and newly written)."""
        return iter(self._checkpoints.values())
