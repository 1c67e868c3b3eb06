"""How an execution ends: the transition each outcome commits, fenced by the claimed generation.

:func:`~.execution.execute` runs the body and calls one of these: a completion, a failure,
a step retry, a suspension (sleep, wait, children), a stop at a step boundary (cancelled or
paused), or an abandon when the database went away. Each returns the :class:`Outcome` and
the messages the transition made runnable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections

from .. import clock, serialization, signals
from ..conf import error_text_limit
from ..exceptions import (
    SerializationError,
    TaskNotRegistered,
    _StepFailed,
    _Suspend,
)
from ..runtime.errors import error_record
from ..runtime.events import consumption_key, wait_names
from ..store import cancellation, endings, events, pausing, runs, slots, suspension
from ..store.checkpoints import CheckpointStore
from ..store.handover import InlineClaim
from ..store.messages import RunMessage
from .ports import ChildMessage, TaskRegistry

logger = logging.getLogger("celery_durable")


@dataclass
class Outcome:
    """How an execution ended."""

    kind: str  # "completed" | "failed" | "suspended" | "cancelled" | "dropped" | "abandoned"
    value: Any = None
    error: BaseException | None = None
    messages: list[RunMessage] = field(default_factory=list)
    children: list[ChildMessage] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    #: The runs its freed slots promoted, when the outcome's own transaction released them
    #: (``None``: the slots, if any, are released after it, by ``slots.release``).
    promoted: list[RunMessage] | None = None


@dataclass
class RunInHand:
    """The run an execution claimed: what its transitions are fenced by and report."""

    run_id: str
    task_name: str
    generation: int
    parent_id: str | None
    using: str
    registry: TaskRegistry
    started_at: Any = None
    #: ``(slot_key1, slot_key2)`` of a run that held its slots when claimed: its completion
    #: hands them on in the same transaction.
    slot_keys: tuple[str | None, str | None] | None = None
    #: The run its completion hands the slot to may be claimed for this process, which then
    #: executes it (inline hand-off): ``handover.InlineClaim``.
    inline_claim: Callable[[], InlineClaim] | None = None

    def duration(self) -> float | None:
        """Seconds since the run first started (``None`` if unknown)."""
        try:
            return None if self.started_at is None else (clock.now() - self.started_at).total_seconds()
        except TypeError:  # naive and aware datetimes mixed by a backend: no duration, no failure
            return None


def not_held(run: RunInHand) -> Outcome:
    """A transition found the run not ours any more: cancelled meanwhile, or taken over."""
    if runs.stopped_by_cancel(run.run_id, run.generation, run.using):
        return stop(run)
    return Outcome("dropped")


def finish(run: RunInHand, value: Any, checkpoints: CheckpointStore) -> Outcome:
    """The body returned: store its result and complete the run.

    The last step's deferred checkpoint is written in the completion's transaction.
    """
    try:
        result = serialization.dumps(value, f"result of {run.task_name}")
    except SerializationError as exc:
        checkpoints.flush(replayable=True)
        return fail(run, exc, None)
    before = checkpoints.write_deferred if checkpoints.deferred else None
    embedded = checkpoints.embedded() if before is not None else []
    promoted = _complete_releasing(run, result, before, embedded)
    done = None
    try:
        if promoted is None:  # no slots to hand on, or not written there: the plain completion decides
            done = endings.complete(run.run_id, run.generation, result, run.parent_id, run.using, before, embedded)
    except DatabaseError as exc:
        return abandon(run.run_id, "completion", exc, run.using)
    if done is False:
        return not_held(run)
    checkpoints.settle()
    value = serialization.loads(result)
    signals.send(signals.run_completed, run.task_name, run.run_id, result=value, duration=run.duration())
    messages = [done] if isinstance(done, RunMessage) else []
    return Outcome("completed", value=value, messages=messages, promoted=promoted)


def _complete_releasing(
    run: RunInHand, result: str, before: Callable[[], None] | None, embedded: list[tuple[str, list[Any]]]
) -> list[RunMessage] | None:
    """A run that holds its slots completes and hands them on in one transaction.

    ``None`` when that does not apply or wrote nothing; also when it failed (see
    :func:`_handing_on`): the plain completion then decides.
    """
    if run.slot_keys is None or run.parent_id is not None or run.using != "default":
        return None
    slot_keys = run.slot_keys
    claim = None if run.inline_claim is None else run.inline_claim()
    return _handing_on(
        run,
        "completing",
        lambda: endings.complete_releasing(run.run_id, run.generation, result, slot_keys, before, embedded, claim),
    )


def _handing_on(run: RunInHand, what: str, hand_on: Callable[[], list[RunMessage] | None]) -> list[RunMessage] | None:
    """``hand_on()``, or ``None`` when it failed (a deadlock on a slot row, the database gone).

    Everything rolled back; the caller's plain transition then decides, and the slots are
    released after it as before (or by the services' backstop).
    """
    try:
        return hand_on()
    except DatabaseError:
        logger.warning(
            "durable run %s: %s with its slots' hand-over failed; %s alone", run.run_id, what, what, exc_info=True
        )
        return None


def fail(run: RunInHand, exc: BaseException, step: tuple[str, int] | None) -> Outcome:
    """The run failed for good (``step``: the failed step and its attempt, if a step failed)."""
    record = error_record(exc, error_text_limit())
    try:
        done = endings.fail(run.run_id, run.generation, record, step, run.parent_id, run.using)
    except DatabaseError as db_exc:
        return abandon(run.run_id, "failure record", db_exc, run.using)
    if done is False:
        return not_held(run)
    if step is not None:
        signals.send(
            signals.step_failed,
            run.task_name,
            run.run_id,
            step_id=step[0],
            attempt=step[1],
            error=record,
            retry_in=None,
        )
    signals.send(signals.run_failed, run.task_name, run.run_id, error=record, step_id=step[0] if step else None)
    return Outcome("failed", error=exc, messages=[done] if isinstance(done, RunMessage) else [])


def step_failed(run: RunInHand, failed: _StepFailed, publish_within: float) -> Outcome:
    """A step failed: queue the run for its retry, or fail it when no retry is left."""
    if failed.retry_in is None:
        return fail(run, failed.error, (failed.step_id, failed.attempts))
    record = error_record(failed.error, error_text_limit())
    try:
        queued = endings.retry_step(
            run.run_id,
            run.generation,
            failed.step_id,
            failed.attempts,
            record,
            failed.retry_in,
            publish_within,
            run.using,
        )
    except DatabaseError as exc:
        return abandon(run.run_id, "retry record", exc, run.using)
    if queued is False:
        return not_held(run)
    signals.send(
        signals.step_failed,
        run.task_name,
        run.run_id,
        step_id=failed.step_id,
        attempt=failed.attempts,
        error=record,
        retry_in=failed.retry_in,
    )
    logger.info(
        "durable run %s: step %r failed (attempt %d), retrying in %.1fs: %r",
        run.run_id,
        failed.step_id,
        failed.attempts,
        failed.retry_in,
        failed.error,
    )
    return Outcome("suspended", messages=[queued] if isinstance(queued, RunMessage) else [])


def commit_suspension(run: RunInHand, suspend: _Suspend) -> Outcome:
    """Commit a sleep, a wait or child runs; the Celery task then ends."""
    details = suspend.details
    try:
        if suspend.reason == "sleep":
            return _suspended(
                run,
                lambda releasing: suspension.sleep(
                    run.run_id,
                    run.generation,
                    details["step_id"],
                    details["output"],
                    details["wake_at"],
                    details["exists"],
                    run.using,
                    releasing,
                ),
            )
        if suspend.reason == "wait":
            outcome = _suspended(
                run,
                lambda releasing: suspension.wait(
                    run.run_id,
                    run.generation,
                    details["step_id"],
                    details["output"],
                    details["event"],
                    details["wake_at"],
                    details["exists"],
                    run.using,
                    releasing,
                ),
            )
            if outcome.kind == "suspended":
                outcome.messages = _event_arrived_meanwhile(run, details["step_id"])
            return outcome
        if suspend.reason == "children":
            return _children(run, details)
        if suspend.reason == "children-pending":
            held = suspension.wait_again(run.run_id, run.generation, details["wake_at"], run.using)
            return Outcome("suspended") if held else not_held(run)
    except DatabaseError as exc:
        return abandon(run.run_id, f"suspension ({suspend.reason})", exc, run.using)
    raise AssertionError(f"unknown suspension {suspend.reason!r}")


def _suspended(run: RunInHand, write: Callable[[bool], bool]) -> Outcome:
    """Commit a sleep or a wait: ``write(releasing)`` suspends the run (``False``: not ours).

    A run that holds its slots gives them back and hands them on in the same transaction;
    where that does not apply or wrote nothing, ``write(False)`` decides and the slots are
    released after it (``slots.release``), as before.
    """
    promoted = None
    if run.slot_keys is not None and run.using == "default":
        slot_keys = run.slot_keys
        promoted = _handing_on(run, "suspending", lambda: slots.hand_on(lambda: slot_keys if write(True) else None))
    if promoted is None and not write(False):
        return not_held(run)
    return Outcome("suspended", promoted=promoted)


def _event_arrived_meanwhile(run: RunInHand, step_id: str) -> list[RunMessage]:
    """After committing a wait, look once more: an event sent while we committed is not lost.

    ``send_event`` commits the event, then looks for waiting runs; the run commits its wait,
    then looks for events. Whichever comes second sees the other; the compare-and-set in
    ``resolve_wait`` lets only one of them resume the run.
    """
    state = events.wait_state(run.run_id, step_id, run.using)
    if state is None:
        return []
    used = {consumption_key(event) for event in events.consumed_events(run.run_id, run.using)}
    found = events.find_event(run.run_id, wait_names(state), state.get("match"), used, run.using)
    if found is None:
        return []
    message = suspension.resolve_wait(run.run_id, step_id, found, run.using)
    return [message] if message is not None else []


def _children(run: RunInHand, details: dict[str, Any]) -> Outcome:
    specs = details["specs"]
    durable = []
    for spec in specs:
        kind = run.registry.is_durable(spec["task"])
        if kind is None:
            return fail(run, TaskNotRegistered(spec["task"]), (details["step_id"], 1))
        durable.append(kind)
    recorded = suspension.children(
        run.run_id,
        run.generation,
        details["step_id"],
        details["kind"],
        specs,
        durable,
        details["output"],
        details["wake_at"],
        run.using,
    )
    if recorded is None:
        return not_held(run)
    resume = [recorded.resume] if recorded.resume is not None else []
    return Outcome("suspended", children=recorded.created, messages=resume)


def stop(run: RunInHand) -> Outcome:
    """The run was cancelled while executing: it stops at this step boundary."""
    try:
        outcome = cancellation.stop_at_boundary(run.run_id, run.generation, run.using)
    except DatabaseError as exc:
        return abandon(run.run_id, "cancellation", exc, run.using)
    if outcome is None:
        return Outcome("dropped")
    return Outcome("cancelled", messages=outcome.messages, cancelled=outcome.cancelled)


def hold(run: RunInHand) -> Outcome:
    """The run's task (or key) was paused while it executed: it stops at this step boundary."""
    try:
        held = pausing.hold_running(run.run_id, run.generation, run.using)
    except DatabaseError as exc:
        return abandon(run.run_id, "pause", exc, run.using)
    if held is False:
        return not_held(run)
    # Resumed meanwhile: the run is queued again at once.
    return Outcome("suspended", messages=[held] if isinstance(held, RunMessage) else [])


def abandon(run_id: str, what: str, exc: BaseException, using: str) -> Outcome:
    """The database failed under us: leave the run to its lease and the reaper."""
    logger.warning(
        "durable run %s: database error during %s (%s); it resumes after its lease expires", run_id, what, exc
    )
    with contextlib.suppress(DatabaseError):
        connections[using].close()
    return Outcome("abandoned", error=exc)
