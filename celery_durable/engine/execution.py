"""One execution of a run, Celery-free: claim, replay the body's steps, record the outcome.

The Celery task (``integration.task``) hands a delivery to :func:`deliver` and turns the
:class:`Outcome` into Celery behaviour: a return value, a raised error, or ``Ignore`` for a
suspended or dropped execution.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections

from .. import clock, serialization, signals
from ..conf import error_text_limit, get_settings
from ..exceptions import (
    RetryAfter,
    SerializationError,
    TaskNotRegistered,
    _Cancelled,
    _LeaseLost,
    _StepFailed,
    _Suspend,
)
from ..options import RetryPolicy
from ..runtime import context
from ..runtime.errors import error_record
from ..runtime.events import consumption_key, wait_names
from ..runtime.steps import BODY_STEP, StepContext
from ..states import FINISHED, RunStatus
from ..store import cancellation, claims, events, pausing, runs, slots, suspension
from ..store.cancellation import Cancellation
from ..store.messages import RunMessage
from . import cancel
from .active import active, lease_owner
from .events import send_event as dispatch_event
from .intake import encode_arguments
from .ports import ChildMessage, Publisher, TaskRegistry
from .spec import TaskSpec
from .writer import RunWriter

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


@dataclass
class _Run:
    run_id: str
    task_name: str
    generation: int
    parent_id: str | None
    using: str
    registry: TaskRegistry
    started_at: Any = None

    def duration(self) -> float | None:
        """Seconds since the run first started (``None`` if unknown)."""
        try:
            return None if self.started_at is None else (clock.now() - self.started_at).total_seconds()
        except TypeError:  # naive and aware datetimes mixed by a backend: no duration, no failure
            return None


def execute(
    *,
    run_id: str,
    spec: TaskSpec,
    registry: TaskRegistry,
    send_event: Callable[[str, dict[str, Any], str], Any],
    using: str = "default",
) -> Outcome:
    """Claim ``run_id`` and run the task body with the run's stored arguments under a step context.

    A run of a task with ``concurrency`` that does not hold its slots (resumed after a sleep,
    wait or retry) takes them first, or goes back to the backlog; if its key cannot be
    computed (the key function raises), the run fails. ``send_event`` is what
    ``step.send_event`` calls (it returns the event).
    """
    task_name, body, policy = spec.name, spec.body(), spec.policy
    settings = get_settings()
    owner = lease_owner()
    try:
        claim = claims.claim(run_id, owner, settings.LEASE_SECONDS, using)
    except DatabaseError:
        # Most often a connection the server dropped while the worker idled: reconnect once.
        connections[using].close()
        try:
            claim = claims.claim(run_id, owner, settings.LEASE_SECONDS, using)
        except DatabaseError as exc:
            return _abandon(run_id, "claim", exc, using)
    if claim is None:
        return Outcome("dropped")
    run = _Run(run_id, task_name, claim.generation, claim.run.parent_id, using, registry, claim.run.started_at)
    if spec.concurrency and not claim.run.holds_slots:
        try:
            limits = spec.slot_limits(claim.run.args_value, claim.run.kwargs_value)
        except Exception as exc:  # a key function that raises: the run cannot take its slots, it fails
            return _fail(run, exc, None)
        if not slots.reclaim(run_id, claim.generation, limits, settings.LEASE_SECONDS):
            return Outcome("dropped")
    if claim.run.executions == 1:
        signals.send(signals.run_started, task_name, run_id, execution=1)
    else:
        signals.send(signals.run_resumed, task_name, run_id, execution=claim.run.executions)
    writer = RunWriter(run_id, claim.generation, task_name, send_event, using)
    ctx = StepContext(
        run_id=run_id,
        task_name=task_name,
        checkpoints=claim.checkpoints,
        writer=writer,
        policy=policy,
        clock=clock.now,
        max_output_bytes=settings.MAX_STEP_OUTPUT_BYTES,
        metadata=claim.run.metadata_value,
    )
    token = context.activate(ctx)
    active.ids.add(run_id)
    try:
        try:
            value = body(*claim.run.args_value, **claim.run.kwargs_value)
        finally:
            context.deactivate(token)
        return _finish(run, value)
    except _Suspend as suspend:
        return signals.suspended(task_name, run_id, suspend, _commit_suspension(run, suspend))
    except _StepFailed as failed:
        return _step_failed(run, failed, settings.WAKER_INTERVAL)
    except _Cancelled:
        if writer.pause_pending and run_id not in active.cancelled:
            return _hold(run)
        return _stop(run)
    except _LeaseLost as lost:
        logger.warning("durable run %s: %s; this execution stops", run_id, lost)
        return Outcome("dropped")
    except DatabaseError as exc:
        return _abandon(run_id, "execution", exc, using)
    except Exception as exc:
        # An error raised by the task body outside any step fails the run: such code is
        # re-executed on every replay, so retrying it would not be a step retry. A task that
        # declares Celery's ``autoretry_for`` asked for exactly that: the whole body retries.
        body_retry = _body_retry(policy, claim.checkpoints, exc)
        if body_retry is not None:
            return _step_failed(run, body_retry, settings.WAKER_INTERVAL)
        return _fail(run, exc, None)
    finally:
        active.ids.discard(run_id)
        active.cancelled.discard(run_id)


def _body_retry(policy: RetryPolicy, checkpoints: dict[str, Any], exc: Exception) -> _StepFailed | None:
    """A body failure to retry as a whole, recorded as step ``BODY_STEP``.

    That is ``self.retry()`` / ``RetryAfter`` raised outside any step, or an exception of
    Celery's ``autoretry_for``: what a converted Celery task asked for.
    """
    explicit = isinstance(exc, RetryAfter)
    if not explicit and (policy.autoretry_for is None or not policy.retries_on(exc)):
        return None
    previous = checkpoints.get(BODY_STEP)
    attempts = (previous.attempts if previous is not None else 0) + 1
    if not policy.should_retry(attempts):
        return None
    return _StepFailed(BODY_STEP, exc, attempts, exc.delay if isinstance(exc, RetryAfter) else policy.delay(attempts))


def _not_held(run: _Run) -> Outcome:
    """A transition found the run not ours any more: cancelled meanwhile, or taken over."""
    if runs.stopped_by_cancel(run.run_id, run.generation, run.using):
        return _stop(run)
    return Outcome("dropped")


def _finish(run: _Run, value: Any) -> Outcome:
    try:
        result = serialization.dumps(value, f"result of {run.task_name}")
    except SerializationError as exc:
        return _fail(run, exc, None)
    try:
        done = runs.complete(run.run_id, run.generation, result, run.parent_id, run.using)
    except DatabaseError as exc:
        return _abandon(run.run_id, "completion", exc, run.using)
    if done is False:
        return _not_held(run)
    value = serialization.loads(result)
    signals.send(signals.run_completed, run.task_name, run.run_id, result=value, duration=run.duration())
    return Outcome("completed", value=value, messages=[done] if isinstance(done, RunMessage) else [])


def _fail(run: _Run, exc: BaseException, step: tuple[str, int] | None) -> Outcome:
    record = error_record(exc, error_text_limit())
    try:
        done = runs.fail(run.run_id, run.generation, record, step, run.parent_id, run.using)
    except DatabaseError as db_exc:
        return _abandon(run.run_id, "failure record", db_exc, run.using)
    if done is False:
        return _not_held(run)
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


def _step_failed(run: _Run, failed: _StepFailed, publish_within: float) -> Outcome:
    if failed.retry_in is None:
        return _fail(run, failed.error, (failed.step_id, failed.attempts))
    record = error_record(failed.error, error_text_limit())
    try:
        queued = runs.retry_step(
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
        return _abandon(run.run_id, "retry record", exc, run.using)
    if queued is False:
        return _not_held(run)
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


def _commit_suspension(run: _Run, suspend: _Suspend) -> Outcome:
    """Commit a sleep, a wait or child runs; the Celery task then ends."""
    details = suspend.details
    try:
        if suspend.reason == "sleep":
            held = suspension.sleep(
                run.run_id,
                run.generation,
                details["step_id"],
                details["output"],
                details["wake_at"],
                details["exists"],
                run.using,
            )
            return Outcome("suspended") if held else _not_held(run)
        if suspend.reason == "wait":
            held = suspension.wait(
                run.run_id,
                run.generation,
                details["step_id"],
                details["output"],
                details["event"],
                details["wake_at"],
                details["exists"],
                run.using,
            )
            if not held:
                return _not_held(run)
            return Outcome("suspended", messages=_event_arrived_meanwhile(run, details["step_id"]))
        if suspend.reason == "children":
            return _children(run, details)
        if suspend.reason == "children-pending":
            held = suspension.wait_again(run.run_id, run.generation, details["wake_at"], run.using)
            return Outcome("suspended") if held else _not_held(run)
    except DatabaseError as exc:
        return _abandon(run.run_id, f"suspension ({suspend.reason})", exc, run.using)
    raise AssertionError(f"unknown suspension {suspend.reason!r}")


def _event_arrived_meanwhile(run: _Run, step_id: str) -> list[RunMessage]:
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


def _children(run: _Run, details: dict[str, Any]) -> Outcome:
    specs = details["specs"]
    durable = []
    for spec in specs:
        kind = run.registry.is_durable(spec["task"])
        if kind is None:
            return _fail(run, TaskNotRegistered(spec["task"]), (details["step_id"], 1))
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
        return _not_held(run)
    resume = [recorded.resume] if recorded.resume is not None else []
    return Outcome("suspended", children=recorded.created, messages=resume)


def _stop(run: _Run) -> Outcome:
    """The run was cancelled while executing: it stops at this step boundary."""
    try:
        outcome = cancellation.stop_at_boundary(run.run_id, run.generation, run.using)
    except DatabaseError as exc:
        return _abandon(run.run_id, "cancellation", exc, run.using)
    if outcome is None:
        return Outcome("dropped")
    return Outcome("cancelled", messages=outcome.messages, cancelled=outcome.cancelled)


def _hold(run: _Run) -> Outcome:
    """The run's task (or key) was paused while it executed: it stops at this step boundary."""
    try:
        held = pausing.hold_running(run.run_id, run.generation, run.using)
    except DatabaseError as exc:
        return _abandon(run.run_id, "pause", exc, run.using)
    if held is False:
        return _not_held(run)
    # Resumed meanwhile: the run is queued again at once.
    return Outcome("suspended", messages=[held] if isinstance(held, RunMessage) else [])


def _abandon(run_id: str, what: str, exc: BaseException, using: str) -> Outcome:
    """The database failed under us: leave the run to its lease and the reaper."""
    logger.warning(
        "durable run %s: database error during %s (%s); it resumes after its lease expires", run_id, what, exc
    )
    with contextlib.suppress(DatabaseError):
        connections[using].close()
    return Outcome("abandoned", error=exc)


@dataclass
class Delivery:
    """What became of a delivered message.

    The execution's outcome, the runs its freed slots promoted (to publish or run inline),
    and, for a redelivery of a run that had already ended, its stored ``(status, result or
    error record)``.
    """

    outcome: Outcome
    promoted: list[RunMessage] = field(default_factory=list)
    ended: tuple[str, Any] | None = None


def deliver(
    run_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    spec: TaskSpec,
    registry: TaskRegistry,
    publisher: Publisher,
) -> Delivery:
    """Execute the run a message names; publish what it made runnable; free its slots."""

    def send_event(name: str, data: dict[str, Any], event_id: str) -> Any:
        return dispatch_event(name, data, event_id, registry, publisher)

    outcome = execute(run_id=run_id, spec=spec, registry=registry, send_event=send_event)
    if outcome.kind == "dropped":
        status, value = runs.outcome_of(run_id)
        if status == RunStatus.QUEUED and pausing.hold_queued(run_id):
            # Its task (or key) is paused: the run waits in ``paused`` for ``resume``.
            return Delivery(outcome)
        if status in FINISHED:
            # A redelivery of a run that already ended (its worker may have died before the
            # result backend heard of it): answer with the stored outcome again.
            return Delivery(outcome, ended=(status, value))
        if status == runs.MISSING:
            # Published by a producer that did not record the run (e.g. send_task from
            # another codebase): record it from the message and execute it.
            args_json, kwargs_json = encode_arguments(spec.name, args, kwargs)
            runs.create(run_id=run_id, task_name=spec.name, args=args_json, kwargs=kwargs_json, options="{}")
            outcome = execute(run_id=run_id, spec=spec, registry=registry, send_event=send_event)
    publisher.publish(outcome.messages)
    publisher.publish_children(run_id, outcome.children)
    promoted = _release_slots(run_id) if spec.concurrency and outcome.kind != "dropped" else []
    if outcome.kind == "cancelled":
        cancel.finish(Cancellation(cancelled=outcome.cancelled), publisher)
    return Delivery(outcome, promoted=promoted)


def _release_slots(run_id: str) -> list[RunMessage]:
    try:
        return slots.release(run_id)
    except DatabaseError:
        # The services' backstop gives the slots back and promotes the backlog.
        logger.warning("durable run %s: releasing its slots failed; the backstop will", run_id, exc_info=True)
        return []
