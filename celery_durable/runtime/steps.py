"""The step context of one execution: memoized replay of checkpoints, retries, determinism."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from .. import serialization
from ..exceptions import (
    DurableConfigError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfter,
    SerializationError,
    StepIdError,
    StepNestingError,
    _StepFailed,
)
from ..options import Duration, RetryPolicy, to_seconds
from ..validation import storable
from .metadata import check_fields, check_progress
from .records import CheckpointWriter, StoredStep
from .suspension import SuspendingSteps
from .timeouts import StepTimer

T = TypeVar("T")

logger = logging.getLogger("celery_durable")

# Set by ``celery_durable.testing`` to inject step failures: (task name, step id) -> error.
fault_hook: Callable[[str, str], BaseException | None] | None = None

MAX_STEP_ID_LENGTH = 200
OCCURRENCE_SEPARATOR = "#"
# The failed attempts of a body that retries as a whole (``autoretry_for``); no step id can be it.
BODY_STEP = "#body"
# ``step.patched(change_id)`` records its marker as step ``PATCH_PREFIX + change_id`` (kind "patch").
PATCH_PREFIX = "#patch:"
PATCH_KIND = "patch"


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
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._run_id = run_id
        self._task_name = task_name
        self._checkpoints = checkpoints
        self._writer = writer
        self._policy = policy
        self._clock = clock
        self._max_output_bytes = max_output_bytes
        self._occurrences: dict[str, int] = {}
        # Where each step id was first used, to tell a loop from a copy-pasted id.
        self._first_sites: dict[str, tuple[str, int]] = {}
        self._warned: set[str] = set()
        self._attempt = 1
        self._current: tuple[str, str] | None = None  # (step id as given, with occurrence suffix)
        # The recorded steps (loaded at the claim) and the step ids this execution reached:
        # a recorded step not reached yet means the run's history goes on past this point.
        # Patch markers do not count: code that no longer asks for one just ignores it.
        self._recorded = frozenset(
            sid for sid, stored in checkpoints.items() if sid != BODY_STEP and stored.kind != PATCH_KIND
        )
        self._reached: set[str] = set()
        self._patches: dict[str, bool] = {}
        self._metadata: dict[str, Any] = dict(metadata or {})
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
        site = _call_site()
        if count == 1:
            self._first_sites[step_id] = site
            return step_id
        sid = f"{step_id}{OCCURRENCE_SEPARATOR}{count}"
        if step_id not in self._warned and site != self._first_sites.get(step_id) and sid not in self._checkpoints:
            self._warn_repeated(step_id, sid, site)
        return sid

    def _warn_repeated(self, step_id: str, sid: str, site: tuple[str, int]) -> None:
        """A step id used again from another line (not a loop): once per run and step id.

        A loop repeats an id from the same line and is silent; the warning comes when the
        new occurrence is first recorded, so replays of the run do not repeat it.
        """
        self._warned.add(step_id)
        first = self._first_sites.get(step_id, ("?", 0))
        logger.warning(
            "durable run %s (%s): step id %r is used again at %s:%d (first at %s:%d); it is recorded as %r. "
            "Give each step its own id (a loop may repeat one).",
            self._run_id,
            self._task_name,
            step_id,
            *site,
            *first,
            sid,
            extra={"run_id": self._run_id, "task_name": self._task_name, "step_id": sid},
        )

    def _stored(self, sid: str, kind: str, description: str) -> StoredStep | None:
        self._reached.add(sid)
        stored = self._checkpoints.get(sid)
        if stored is not None and stored.kind != kind:
            raise NonDeterminismError(sid, stored.kind, description)
        return stored

    def run(
        self,
        step_id: str,
        fn: Callable[..., T],
        *args: Any,
        atomic: bool = False,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once per run and return its (JSON) result.

        A later execution of the same run returns the checkpointed value without calling
        ``fn``. With ``atomic=True`` the body runs in ``transaction.atomic()`` together
        with its checkpoint. ``retry`` (a ``RetryPolicy``) replaces the task's retry policy
        for this step; ``timeout`` (seconds or ``timedelta``) raises ``StepTimeout`` inside
        an attempt that runs longer. ``atomic``, ``retry`` and ``timeout`` are reserved:
        they are never passed to ``fn``.
        """
        if not callable(fn):
            raise TypeError(f"step.run({step_id!r}, ...) needs a callable, got {fn!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise DurableConfigError(f"step.run({step_id!r}): retry must be a RetryPolicy, got {retry!r}")
        seconds = None if timeout is None else to_seconds(timeout, f"step.run({step_id!r}) timeout")
        policy = self._policy if retry is None else retry
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
                    output = self._call(sid, fn, args, kwargs, seconds)
                    self._writer.save_output(sid, "run", output, attempts, started_at, stored is not None)
            else:
                output = self._call(sid, fn, args, kwargs, seconds)
        except (NonRetriableError, SerializationError, StepNestingError, StepIdError, NonDeterminismError) as exc:
            # Retrying cannot help: a declared permanent failure or a programming error.
            raise _StepFailed(sid, exc, attempts, None) from exc
        except RetryAfter as exc:
            raise _StepFailed(sid, exc, attempts, exc.delay if policy.should_retry(attempts) else None) from exc
        except Exception as exc:
            retrying = policy.retries_on(exc) and policy.should_retry(attempts)
            raise _StepFailed(sid, exc, attempts, policy.delay(attempts) if retrying else None) from exc
        finally:
            self._current = None
        if not atomic:
            self._writer.save_output(sid, "run", output, attempts, started_at, stored is not None)
        self._checkpoints[sid] = StoredStep(sid, "run", "completed", output, attempts)
        self.executed.append(sid)
        # Return the decoded JSON so the first execution sees exactly what a replay sees.
        result: T = serialization.loads(output)
        return result

    def _call(
        self, sid: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float | None
    ) -> str:
        """One attempt of a step body, encoded; under its time limit if it has one."""
        if seconds is None:
            return self._encode(sid, fn(*args, **kwargs))
        with StepTimer(sid, seconds) as timer:
            value = fn(*args, **kwargs)
        # No signal reached the body (not the main thread), or it swallowed StepTimeout.
        timer.check()
        return self._encode(sid, value)

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the code path of change ``change_id``.

        ``True`` for a run that reaches this point under the new code (the marker is then
        recorded as a checkpoint of kind ``"patch"``) or that recorded the marker before;
        ``False`` for a run whose recorded history already went past this point without
        the marker (it started under the old code: keep the old path for it). The answer
        is fixed for the rest of the execution.
        """
        validate_step_id(change_id)
        if change_id in self._patches:
            return self._patches[change_id]
        self._boundary()
        if self._current is not None:
            raise StepNestingError(f"step.patched({change_id!r}) was called inside the body of a step")
        sid = PATCH_PREFIX + change_id
        if sid not in self._checkpoints and self._history_goes_on():
            value = False
        else:
            stored = self._stored(sid, PATCH_KIND, f"step.patched({change_id!r})")
            if stored is None:
                self._writer.save_output(sid, PATCH_KIND, "true", 1, self._clock(), False)
                self._record(sid, PATCH_KIND, "true")
            value = True
        self._patches[change_id] = value
        return value

    def set_metadata(self, **fields: Any) -> None:
        """Store small JSON fields on the run, searchable by equality (``field:value`` in the admin).

        Names are identifiers; values are str, int, float, bool or ``None`` (at most 200
        characters as text). A field set again replaces its value. Only changed fields are
        written (one small transaction), so a replay that sets the same values writes nothing.
        Raises ``InvalidMetadata`` for a bad name or value, and then stores nothing.
        """
        check_fields(fields, self._metadata)
        changed = {
            name: value
            for name, value in fields.items()
            if name not in self._metadata or _typed(self._metadata[name]) != _typed(value)
        }
        if not changed:
            return
        merged = {**self._metadata, **changed}
        self._writer.set_metadata(merged, changed)
        self._metadata = merged

    @property
    def metadata(self) -> dict[str, Any]:
        """The run's metadata fields (a copy)."""
        return dict(self._metadata)

    def progress(self, done: float, total: float, message: str = "") -> None:
        """Report the progress of the running step (shown on the run page while it runs).

        One small UPDATE of the run per call: call it every few seconds, not per item.
        """
        record = check_progress(done, total, message)
        record["step"] = self._current[1] if self._current is not None else None
        record["at"] = self._clock().isoformat()
        self._writer.set_progress(record)

    def _history_goes_on(self) -> bool:
        """Whether a recorded step of this run has not been reached yet in this execution."""
        return not self._recorded <= self._reached

    def _encode(self, sid: str, value: Any) -> str:
        return serialization.dumps_value(value, f"output of step {sid!r} of {self._task_name}", self._max_output_bytes)

    def steps(self) -> Iterator[StoredStep]:
        """The checkpoints known to this execution (loaded and newly written)."""
        return iter(self._checkpoints.values())


def _typed(value: Any) -> tuple[type, Any]:
    """A value with its type: ``1``, ``1.0`` and ``True`` compare equal, as metadata they differ."""
    return (type(value), value)


def _call_site() -> tuple[str, int]:
    """File and line of the first caller outside celery_durable (the task body's step call)."""
    frame = sys._getframe(2)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("celery_durable."):
        frame = frame.f_back  # type: ignore[assignment]
    return ("?", 0) if frame is None else (frame.f_code.co_filename, frame.f_lineno)
