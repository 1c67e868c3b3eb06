"""One execution of a run, Celery-free: claim, replay the body's steps, record the outcome.

The Celery task (``integration.task``) hands a delivery to :func:`deliver` and turns the
:class:`Outcome` into Celery behaviour: a return value, a raised error, or ``Ignore`` for a
suspended or dropped execution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, connections

from .. import clock, signals
from ..conf import get_settings
from ..exceptions import (
    RetryAfter,
    _Cancelled,
    _LeaseLost,
    _StepFailed,
    _Suspend,
)
from ..options import RetryPolicy
from ..runtime import context
from ..runtime.steps import BODY_STEP, StepContext
from ..states import FINISHED, RunStatus
from ..store import claims, pausing, runs, slots
from ..store.cancellation import Cancellation
from ..store.handover import InlineClaim
from ..store.messages import RunMessage
from . import cancel
from .active import active, lease_owner
from .events import send_event as dispatch_event
from .intake import encode_arguments
from .outcomes import Outcome, RunInHand, abandon, commit_suspension, fail, finish, hold, step_failed, stop
from .ports import Publisher, TaskRegistry
from .spec import TaskSpec
from .writer import RunWriter

logger = logging.getLogger("celery_durable")


def execute(
    *,
    run_id: str,
    spec: TaskSpec,
    registry: TaskRegistry,
    send_event: Callable[[str, dict[str, Any], str], Any],
    using: str = "default",
    claimed: RunMessage | None = None,
    claim_next: bool = False,
) -> Outcome:
    """Claim ``run_id`` and run the task body with the run's stored arguments under a step context.

    A run of a task with ``concurrency`` that does not hold its slots (resumed after a sleep,
    wait or retry) takes them first, or goes back to the backlog; if its key cannot be
    computed (the key function raises), the run fails. ``send_event`` is what
    ``step.send_event`` calls (it returns the event).

    ``claimed``: the run's message from a hand-over that claimed it for this process (its
    claim is not taken again). ``claim_next``: this process will execute the run the
    completion hands the slot to, so the hand-over may claim it (``handover.InlineClaim``).
    """
    task_name, body, policy = spec.name, spec.body(), spec.policy
    settings = get_settings()
    owner = lease_owner()
    try:
        claim = _claim(run_id, owner, settings.LEASE_SECONDS, using, claimed)
    except DatabaseError:
        # Most often a connection the server dropped while the worker idled: reconnect once.
        connections[using].close()
        try:
            claim = _claim(run_id, owner, settings.LEASE_SECONDS, using, claimed)
        except DatabaseError as exc:
            return abandon(run_id, "claim", exc, using)
    if claim is None:
        return Outcome("dropped")
    run = RunInHand(run_id, task_name, claim.generation, claim.run.parent_id, using, registry, claim.run.started_at)
    if claim_next:
        lease = timedelta(seconds=settings.LEASE_SECONDS)
        run.inline_claim = lambda: InlineClaim(task_name, owner, clock.now() + lease)
    if spec.concurrency and claim.run.holds_slots:
        run.slot_keys = (claim.run.slot_key1, claim.run.slot_key2)
    elif spec.concurrency:
        try:
            limits = spec.slot_limits(claim.run.args_value, claim.run.kwargs_value)
        except Exception as exc:  # a key function that raises: the run cannot take its slots, it fails
            return fail(run, exc, None)
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
            value = _call(body, claim.run.args_value, claim.run.kwargs_value, writer)
        finally:
            context.deactivate(token)
        return finish(run, value, writer)
    except _Suspend as suspend:
        return signals.suspended(task_name, run_id, suspend, commit_suspension(run, suspend))
    except _StepFailed as failed:
        return step_failed(run, failed, settings.WAKER_INTERVAL)
    except _Cancelled:
        if writer.pause_pending and run_id not in active.cancelled:
            return hold(run)
        return stop(run)
    except _LeaseLost as lost:
        logger.warning("durable run %s: %s; this execution stops", run_id, lost)
        return Outcome("dropped")
    except DatabaseError as exc:
        return abandon(run_id, "execution", exc, using)
    except Exception as exc:
        # An error raised by the task body outside any step fails the run: such code is
        # re-executed on every replay, so retrying it would not be a step retry. A task that
        # declares Celery's ``autoretry_for`` asked for exactly that: the whole body retries.
        body_retry = _body_retry(policy, claim.checkpoints, exc)
        if body_retry is not None:
            return step_failed(run, body_retry, settings.WAKER_INTERVAL)
        return fail(run, exc, None)
    finally:
        active.ids.discard(run_id)
        active.cancelled.discard(run_id)


def _claim(run_id: str, owner: str, lease: float, using: str, claimed: RunMessage | None) -> claims.Claim | None:
    """The run's claim: taken now, or already taken by the hand-over that made ``claimed``."""
    if claimed is not None:
        return claims.handed_over(claimed, using)
    return claims.claim(run_id, owner, lease, using)


def _call(body: Callable[..., Any], args: Any, kwargs: Any, writer: RunWriter) -> Any:
    """The task body; if it ends otherwise than by returning, the deferred checkpoints are written first.

    That is a failure, a step's retry or a suspension: the history before it is recorded
    (a completion writes them itself: see ``store.checkpoints``). A refused write raises
    instead, as it would have at the next boundary.
    """
    try:
        return body(*args, **kwargs)
    except (Exception, _Suspend, _StepFailed):
        writer.flush(replayable=True)
        raise


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
    claimed: RunMessage | None = None,
    claim_next: bool = False,
) -> Delivery:
    """Execute the run a message names; publish what it made runnable; free its slots.

    ``claimed`` and ``claim_next``: the inline hand-off's, as :func:`execute` takes them.
    """

    def send_event(name: str, data: dict[str, Any], event_id: str) -> Any:
        return dispatch_event(name, data, event_id, registry, publisher)

    outcome = execute(
        run_id=run_id, spec=spec, registry=registry, send_event=send_event, claimed=claimed, claim_next=claim_next
    )
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
    if outcome.promoted is not None:  # released by the outcome's own transaction
        promoted = outcome.promoted
    else:
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
