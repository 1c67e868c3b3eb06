"""Replaying a recorded history against the code as it is now, without running or writing anything.

A :class:`ReplayCheckContext` is a step context whose checkpoints are a run's recorded
history, in the order the steps were first reached. Replayed steps return their stored
output as in a real execution; the replay stops at the first step that has no completed
checkpoint (where a real execution would run a step body, suspend, or write a marker).
Reaching that point with every recorded step consumed in order is success. A recorded
step the code no longer reaches, or reaches with another kind, is a failure. Step bodies
never run and the writer refuses every write; code outside steps does run, as it does in
every real execution (it must be free of side effects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..exceptions import NonDeterminismError, _Interrupt, _Suspend
from ..options import RetryPolicy
from . import context
from .records import StoredStep
from .steps import BODY_STEP, PATCH_KIND, StepContext

# Causes of a failed replay (``ReplayVerdict.cause``).
NONDETERMINISM = "nondeterminism"  # a recorded step is reached as another kind of step
STEP_NOT_REACHED = "step-not-reached"  # a recorded step is no longer reached (in its order)
TASK_REMOVED = "task-removed"  # the run's task is not registered (or not durable) any more
BODY_ERROR = "error"  # the code outside steps raised on the recorded values


@dataclass(frozen=True)
class ReplayVerdict:
    """What replaying one run's history against the current code found.

    ``ok`` with ``stopped_at``: the step where the real execution would go on (run a new
    step, resume a sleep or wait, retry a failed step); ``None`` when the body would return.
    Otherwise ``cause`` (one of the module's constants), ``step_id`` and ``detail`` say why.
    """

    run_id: str
    task_name: str
    ok: bool
    cause: str | None = None
    step_id: str | None = None
    detail: str = ""
    stopped_at: str | None = None
    replayed: int = 0

    def to_json(self) -> dict[str, Any]:
        """The verdict as a JSON-ready dict."""
        return {
            "run_id": self.run_id,
            "task_name": self.task_name,
            "ok": self.ok,
            "cause": self.cause,
            "step_id": self.step_id,
            "detail": self.detail,
            "stopped_at": self.stopped_at,
            "replayed": self.replayed,
        }


class _Stop(_Interrupt):
    """The replay reached the edge of the recorded history."""

    def __init__(self, step_id: str) -> None:
        super().__init__(step_id)
        self.step_id = step_id


class _Mismatch(_Interrupt):
    """The code departs from the recorded history."""

    def __init__(self, cause: str, step_id: str, detail: str) -> None:
        super().__init__(cause, step_id, detail)
        self.cause = cause
        self.step_id = step_id
        self.detail = detail


class _WriteRefused(_Interrupt):
    """Something tried to write during a replay check (never expected)."""


class RefusingWriter:
    """A checkpoint writer that writes nothing: every write stops the check."""

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Refused."""
        raise _WriteRefused(f"write of step {step_id!r}")

    def flush(self) -> None:
        """Nothing to write: every write was refused."""

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:
        """Refused."""
        raise _WriteRefused("atomic step")
        yield None  # pragma: no cover

    def complete_pending(self, step_id: str, output: str) -> None:
        """Refused."""
        raise _WriteRefused(f"completion of step {step_id!r}")

    def find_event(self, names: list[str], match: dict[str, Any] | None, exclude: set[str]) -> dict[str, Any] | None:
        """Refused (a replay never looks for new events)."""
        raise _WriteRefused("event look-up")

    def children(self, step_id: str) -> list[dict[str, Any]]:
        """Refused (a replay never looks at running children)."""
        raise _WriteRefused(f"children of step {step_id!r}")

    def cancel_requested(self) -> bool:
        """Never cancelled."""
        return False

    def send_event(self, name: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
        """Refused."""
        raise _WriteRefused(f"event {name!r}")

    def set_metadata(self, metadata: dict[str, Any], changed: dict[str, Any]) -> None:
        """Ignored: metadata is no checkpoint, it cannot make a replay diverge."""

    def set_progress(self, progress: dict[str, Any]) -> None:
        """Ignored: progress is no checkpoint."""


class ReplayCheckContext(StepContext):
    """A step context that replays ``history`` (in recorded order) and stops at its edge."""

    def __init__(
        self,
        *,
        run_id: str,
        task_name: str,
        history: list[StoredStep],
        policy: RetryPolicy,
        clock: Callable[[], datetime],
    ) -> None:
        super().__init__(
            run_id=run_id,
            task_name=task_name,
            checkpoints={stored.step_id: stored for stored in history},
            writer=RefusingWriter(),
            policy=policy,
            clock=clock,
            max_output_bytes=2**63,
        )
        # Patch markers are not part of the order: a marker no longer asked for is ignored.
        self._order = [s.step_id for s in history if s.step_id != BODY_STEP and s.kind != PATCH_KIND]
        self._next = 0
        self.failure: _Mismatch | None = None

    def _fail(self, cause: str, step_id: str, detail: str) -> _Mismatch:
        if self.failure is None:  # the first departure is the one to report
            self.failure = _Mismatch(cause, step_id, detail)
        return self.failure

    def _stored(self, sid: str, kind: str, description: str) -> StoredStep | None:
        try:
            stored = super()._stored(sid, kind, description)
        except NonDeterminismError as exc:
            raise self._fail(NONDETERMINISM, sid, str(exc)) from exc
        if stored is not None and stored.kind == PATCH_KIND:
            return stored  # a recorded marker asked for again: True, wherever it is
        expected = self._order[self._next] if self._next < len(self._order) else None
        if stored is None:
            if expected is not None:
                raise self._fail(
                    STEP_NOT_REACHED,
                    expected,
                    f"recorded step {expected!r} is no longer reached: the code reaches new step {sid!r} first",
                )
            raise _Stop(sid)
        if sid != expected:
            raise self._fail(
                STEP_NOT_REACHED,
                expected or sid,
                f"recorded step {expected!r} is no longer reached before recorded step {sid!r}",
            )
        self._next += 1
        if stored.status != "completed":
            # A sleep, wait or child run in progress, or a failed step to retry: the real
            # execution goes on from here. Nothing can be recorded after it.
            raise _Stop(sid)
        return stored

    @property
    def consumed(self) -> int:
        """How many recorded steps the replay consumed."""
        return self._next

    def unreached(self) -> str | None:
        """The first recorded step the replay did not reach, if any."""
        return self._order[self._next] if self._next < len(self._order) else None


def check_history(
    *,
    run_id: str,
    task_name: str,
    body: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    history: list[StoredStep],
    policy: RetryPolicy,
    clock: Callable[[], datetime],
) -> ReplayVerdict:
    """Replay ``history`` (a run's checkpoints in the order they were first reached) against ``body``."""
    ctx = ReplayCheckContext(run_id=run_id, task_name=task_name, history=history, policy=policy, clock=clock)
    verdict = _replay(ctx, body, args, kwargs)
    if ctx.failure is not None:  # reported even if the body caught the error it raised
        failure = ctx.failure
        return ReplayVerdict(run_id, task_name, False, failure.cause, failure.step_id, failure.detail)
    return verdict


def _replay(
    ctx: ReplayCheckContext, body: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> ReplayVerdict:
    run_id, task_name = ctx.run_id, ctx._task_name
    token = context.activate(ctx)
    try:
        body(*args, **kwargs)
    except _Stop as stop:
        return ReplayVerdict(run_id, task_name, True, stopped_at=stop.step_id, replayed=ctx.consumed)
    except _Mismatch as mismatch:
        return ReplayVerdict(run_id, task_name, False, mismatch.cause, mismatch.step_id, mismatch.detail)
    except _WriteRefused as refused:
        return ReplayVerdict(run_id, task_name, False, BODY_ERROR, None, f"the replay tried to write: {refused}")
    except _Suspend as suspend:
        return ReplayVerdict(run_id, task_name, True, stopped_at=suspend.details.get("step_id"))
    except _Interrupt as interrupt:
        return ReplayVerdict(run_id, task_name, False, BODY_ERROR, None, f"the replay stopped: {interrupt!r}")
    except Exception as exc:
        detail = f"the code outside steps raises {type(exc).__name__}: {exc}"
        return ReplayVerdict(run_id, task_name, False, BODY_ERROR, ctx.unreached(), detail)
    finally:
        context.deactivate(token)
    missing = ctx.unreached()
    if missing is not None:
        detail = f"recorded step {missing!r} is no longer reached: the body returns before it"
        return ReplayVerdict(run_id, task_name, False, STEP_NOT_REACHED, missing, detail)
    return ReplayVerdict(run_id, task_name, True, replayed=ctx.consumed)
