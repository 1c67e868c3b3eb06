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
from .exceptions import SerializationError, _LeaseLost, _StepFailed
from .options import RetryPolicy
from .runtime import context
from .runtime.errors import error_record
from .runtime.steps import StepContext

logger = logging.getLogger("celery_durable")


@dataclass
class Outcome:
    """How an execution ended."""

    kind: str  # "completed" | "failed" | "suspended" | "dropped" | "abandoned"
    value: Any = None
    error: BaseException | None = None
    nudges: list[runs.Nudge] = field(default_factory=list)


_owner: tuple[int, str] | None = None


def lease_owner() -> str:
    """This process's lease-owner name: host, pid and a random suffix (new after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


class ActiveRuns:
    """The runs this process is executing now, for the heartbeat."""

    def __init__(self) -> None:
        self.ids: set[str] = set()


active = ActiveRuns()


def execute(
    *,
    run_id: str,
    task_name: str,
    body: Callable[..., Any],
    policy: RetryPolicy,
    using: str = "default",
) -> Outcome:
    """Claim ``run_id`` and run ``body`` with the run's stored arguments under a step context."""
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
    if claim.run.executions == 1:
        signals.send(signals.run_started, task_name, run_id, execution=1)
    else:
        signals.send(signals.run_resumed, task_name, run_id, execution=claim.run.executions)
    writer = OrmCheckpointWriter(run_id, claim.generation, using, task_name)
    ctx = StepContext(
        run_id=run_id,
        task_name=task_name,
        checkpoints=claim.checkpoints,
        writer=writer,
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
        return _finish(run_id, task_name, claim.generation, value, using)
    except _StepFailed as failed:
        return _step_failed(run_id, task_name, claim.generation, failed, settings.WAKER_INTERVAL, using)
    except _LeaseLost as lost:
        logger.warning("durable run %s: %s; this execution stops", run_id, lost)
        return Outcome("dropped")
    except DatabaseError as exc:
        return _abandon(run_id, "execution", exc, using)
    except Exception as exc:
        # An error raised by the task body outside any step fails the run: such code is
        # re-executed on every replay, so retrying it would not be a step retry.
        return _fail(run_id, task_name, claim.generation, exc, None, using)
    finally:
        active.ids.discard(run_id)


def _finish(run_id: str, task_name: str, generation: int, value: Any, using: str) -> Outcome:
    try:
        result = serialization.dumps(value, f"result of {task_name}")
    except SerializationError as exc:
        return _fail(run_id, task_name, generation, exc, None, using)
    if not runs.complete(run_id, generation, result, using):
        return Outcome("dropped")
    value = serialization.loads(result)
    signals.send(signals.run_completed, task_name, run_id, result=value)
    return Outcome("completed", value=value)


def _fail(
    run_id: str, task_name: str, generation: int, exc: BaseException, step: tuple[str, int] | None, using: str
) -> Outcome:
    record = error_record(exc)
    try:
        if not runs.fail(run_id, generation, record, step, using):
            return Outcome("dropped")
    except DatabaseError as db_exc:
        return _abandon(run_id, "failure record", db_exc, using)
    if step is not None:
        signals.send(
            signals.step_failed, task_name, run_id, step_id=step[0], attempt=step[1], error=record, retry_in=None
        )
    signals.send(signals.run_failed, task_name, run_id, error=record, step_id=step[0] if step else None)
    return Outcome("failed", error=exc)


def _step_failed(
    run_id: str, task_name: str, generation: int, failed: _StepFailed, publish_within: float, using: str
) -> Outcome:
    if failed.retry_in is None:
        return _fail(run_id, task_name, generation, failed.error, (failed.step_id, failed.attempts), using)
    try:
        queued = runs.retry_step(
            run_id,
            generation,
            failed.step_id,
            failed.attempts,
            error_record(failed.error),
            failed.retry_in,
            publish_within,
            using,
        )
    except DatabaseError as exc:
        return _abandon(run_id, "retry record", exc, using)
    if queued is False:
        return Outcome("dropped")
    signals.send(
        signals.step_failed,
        task_name,
        run_id,
        step_id=failed.step_id,
        attempt=failed.attempts,
        error=error_record(failed.error),
        retry_in=failed.retry_in,
    )
    logger.info(
        "durable run %s: step %r failed (attempt %d), retrying in %.1fs: %r",
        run_id,
        failed.step_id,
        failed.attempts,
        failed.retry_in,
        failed.error,
    )
    return Outcome("suspended", nudges=[queued] if isinstance(queued, runs.Nudge) else [])


def _abandon(run_id: str, what: str, exc: BaseException, using: str) -> Outcome:
    """The database failed under us: leave the run to its lease and the reaper."""
    logger.warning(
        "durable run %s: database error during %s (%s); it resumes after its lease expires",
        run_id,
        what,
        exc,
    )
    with contextlib.suppress(DatabaseError):
        connections[using].close()
    return Outcome("abandoned", error=exc)
