"""One execution of a run, Celery-free: claim, replay the body's steps, record the outcome.

The Celery task (``integration.task``) turns the :class:`Outcome` into Celery behaviour:
a return value, a raised error, or ``Ignore`` for a suspended or dropped execution.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections

from . import clock, runs, serialization, signals
from .checkpoints import OrmCheckpointWriter
from .conf import get_settings
from .exceptions import RetryAfter, SerializationError, _Cancelled, _LeaseLost, _StepFailed, _Suspend
from .options import RetryPolicy
from .runtime import context
from .runtime.errors import error_record
from .runtime.steps import BODY_STEP, StepContext

logger = logging.getLogger("celery_durable")


@dataclass
class Outcome:
    """How an execution ended."""

    kind: str  # "completed" | "failed" | "suspended" | "cancelled" | "dropped" | "abandoned"
    value: Any = None
    error: BaseException | None = None
    nudges: list[runs.Nudge] = field(default_factory=list)
    children: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


_owner: tuple[int, str] | None = None


def lease_owner() -> str:
    """This process's lease-owner name: host, pid and a random suffix (new after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


class ActiveRuns:
    """The runs this process is executing now (for the heartbeat), and those asked to stop."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.cancelled: set[str] = set()


active = ActiveRuns()


@dataclass
class _Run:
    run_id: str
    task_name: str
    generation: int
    parent_id: str | None
    using: str
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
    task_name: str,
    body: Callable[..., Any],
    policy: RetryPolicy,
    slot_limits: dict[str, int] | None = None,
    using: str = "default",
) -> Outcome:
    """Claim ``run_id`` and run ``body`` with the run's stored arguments under a step context.

    With ``slot_limits`` (a task with ``concurrency``), a run that does not hold its slots
    (resumed after a sleep, wait or retry) takes them first, or goes back to the backlog.
    """
    settings = get_settings()
    owner = lease_owner()
    try:
        claim = runs.claim(run_id, owner, settings.LEASE_SECONDS, using)
    except DatabaseError:
        # Most often a connection the server dropped while the worker idled: reconnect once.
        connections[using].close()
        try:
            claim = runs.claim(run_id, owner, settings.LEASE_SECONDS, using)
        except DatabaseError as exc:
            return _abandon(run_id, "claim", exc, using)
    if claim is None:
        return Outcome("dropped")
    if slot_limits and not claim.run.holds_slots:
        from . import slots

        if not slots.reclaim(run_id, claim.generation, slot_limits):
            return Outcome("dropped")
    if claim.run.executions == 1:
        signals.send(signals.run_started, task_name, run_id, execution=1)
    else:
        signals.send(signals.run_resumed, task_name, run_id, execution=claim.run.executions)
    run = _Run(run_id, task_name, claim.generation, claim.run.parent_id, using, claim.run.started_at)
    ctx = StepContext(
        run_id=run_id,
        task_name=task_name,
        checkpoints=claim.checkpoints,
        writer=OrmCheckpointWriter(run_id, claim.generation, using, task_name),
        policy=policy,
        clock=clock.now,
        max_output_bytes=settings.MAX_STEP_OUTPUT_BYTES,
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
        return signals.suspended(task_name, run_id, suspend, _suspend(run, suspend))
    except _StepFailed as failed:
        return _step_failed(run, failed, settings.WAKER_INTERVAL)
    except _Cancelled:
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
    return Outcome("completed", value=value, nudges=[done] if isinstance(done, runs.Nudge) else [])


def _fail(run: _Run, exc: BaseException, step: tuple[str, int] | None) -> Outcome:
    record = error_record(exc)
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
    return Outcome("failed", error=exc, nudges=[done] if isinstance(done, runs.Nudge) else [])


def _step_failed(run: _Run, failed: _StepFailed, publish_within: float) -> Outcome:
    if failed.retry_in is None:
        return _fail(run, failed.error, (failed.step_id, failed.attempts))
    record = error_record(failed.error)
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
    return Outcome("suspended", nudges=[queued] if isinstance(queued, runs.Nudge) else [])


def _suspend(run: _Run, suspend: _Suspend) -> Outcome:
    """Commit a sleep, a wait or child runs; the Celery task then ends."""
    from . import suspend as transitions

    details = suspend.details
    try:
        if suspend.reason == "sleep":
            held = transitions.sleep(
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
            held = transitions.wait(
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
            return Outcome("suspended", nudges=_event_arrived_meanwhile(run, details["step_id"]))
        if suspend.reason == "children":
            return _children(run, details)
        if suspend.reason == "children-pending":
            held = transitions.wait_again(run.run_id, run.generation, details["wake_at"], run.using)
            return Outcome("suspended") if held else _not_held(run)
    except DatabaseError as exc:
        return _abandon(run.run_id, f"suspension ({suspend.reason})", exc, run.using)
    raise AssertionError(f"unknown suspension {suspend.reason!r}")


def _event_arrived_meanwhile(run: _Run, step_id: str) -> list[runs.Nudge]:
    """After committing a wait, look once more: an event sent while we committed is not lost.

    ``send_event`` commits the event, then looks for waiting runs; the run commits its wait,
    then looks for events. Whichever comes second sees the other; the compare-and-set in
    ``resolve_wait`` lets only one of them resume the run.
    """
    from . import suspend as transitions
    from .models import Step

    step = Step.objects.using(run.using).filter(run_id=run.run_id, step_id=step_id).values("output").first()
    if step is None:
        return []
    state = serialization.loads(step["output"] or "{}")
    from .events import find_event
    from .runtime.events import consumption_key

    outputs = Step.objects.using(run.using).filter(run_id=run.run_id, kind="wait", status="completed")
    used = set()
    for out in outputs.values_list("output", flat=True):
        event = serialization.loads(out or "{}").get("event")
        if event:
            used.add(consumption_key(event))
    found = find_event(run.run_id, state["name"], state.get("match"), used, run.using)
    if found is None:
        return []
    nudge = transitions.resolve_wait(run.run_id, step_id, found, run.using)
    return [nudge] if nudge is not None else []


def _children(run: _Run, details: dict[str, Any]) -> Outcome:
    from . import suspend as transitions
    from .exceptions import TaskNotRegistered
    from .integration.task import is_durable_task_name

    specs = details["specs"]
    durable = []
    for spec in specs:
        kind = is_durable_task_name(spec["task"])
        if kind is None:
            return _fail(run, TaskNotRegistered(spec["task"]), (details["step_id"], 1))
        durable.append(kind)
    created = transitions.children(
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
    if created is None:
        return _not_held(run)
    return Outcome("suspended", children=created)


def _stop(run: _Run) -> Outcome:
    """The run was cancelled while executing: it stops at this step boundary."""
    from .cancellation import stop_at_boundary

    try:
        outcome = stop_at_boundary(run.run_id, run.generation, run.using)
    except DatabaseError as exc:
        return _abandon(run.run_id, "cancellation", exc, run.using)
    if outcome is None:
        return Outcome("dropped")
    return Outcome("cancelled", nudges=outcome.nudges, cancelled=outcome.cancelled)


def _abandon(run_id: str, what: str, exc: BaseException, using: str) -> Outcome:
    """The database failed under us: leave the run to its lease and the reaper."""
    logger.warning(
        "durable run %s: database error during %s (%s); it resumes after its lease expires", run_id, what, exc
    )
    with contextlib.suppress(DatabaseError):
        connections[using].close()
    return Outcome("abandoned", error=exc)
