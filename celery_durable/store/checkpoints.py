"""Checkpoints: one fenced INSERT per new step, and the fence of an atomic step.

A step's checkpoint is *deferred*: it is written at the next step boundary
(:meth:`CheckpointStore.flush`), or, when the body returns, in the completion's own
transaction (:meth:`CheckpointStore.write_deferred`). A run of n steps thus costs n + 2
commits (intake, claim, n - 1 checkpoints, the last one with the completion). A crash
between a step's return and that write runs the step again, as a crash mid-step does.
The completion of a pending sleep, wait or child-run step is *replayable*: a replay
completes it again the same way and runs nothing, so it waits for the next write that
must not wait (or for the completion) and is written in the same transaction.

A checkpoint is written with ``INSERT ... SELECT ... FROM run WHERE id=%s AND
generation=%s AND cancel_requested_at IS NULL AND NOT EXISTS (a pause of its task or key)``:
one statement (no read before it, one commit in autocommit mode) that writes nothing if
another execution has claimed the run since (fencing) or the run was cancelled. A write
refused for a pause is made again without that condition (the step's work is kept) and the
run stops at its next step boundary (``pause_pending``). The ORM cannot express an INSERT
from a SELECT, hence the SQL; it is portable across PostgreSQL, MySQL/MariaDB and SQLite.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connections, transaction

from .. import clock
from ..exceptions import _Cancelled, _LeaseLost
from ..models import Run, Step
from ..states import RunStatus, StepStatus
from .pausing import not_paused_sql, paused_here
from .runs import stopped_by_cancel

#: The columns a new step row is written with (here and by ``suspension``'s one-statement suspension).
STEP_COLUMNS = ("run_id", "step_id", "kind", "status", "output", "attempts", "started_at", "finished_at")


@dataclass(frozen=True)
class CheckpointWrite:
    """A fenced checkpoint statement not executed yet, and what to report once it is.

    ``duration``: seconds the step took (``None`` for a pending step that completes).
    """

    sql: str
    params: list[Any]
    step_id: str
    attempts: int
    duration: float | None
    #: Written again the same way by a replay, at no cost: need not be written at a boundary.
    replayable: bool = False


class CheckpointStore:
    """Writes checkpoints of one execution, fenced by the generation it claimed."""

    def __init__(self, run_id: str, generation: int, using: str = "default") -> None:
        self.run_id = run_id
        self.generation = generation
        self.using = using
        q = connections[using].ops.quote_name
        self._step, self._run = q(Step._meta.db_table), q(Run._meta.db_table)
        self._q = q
        # Fence: the run is still ours, not cancelled, and not paused.
        held = (
            f"SELECT 1 FROM {self._run} WHERE {self._run}.{q('id')} = %s AND {self._run}.{q('generation')} = %s "
            f"AND {self._run}.{q('cancel_requested_at')} IS NULL"
        )
        self._not_paused = f" AND {not_paused_sql(self._run, using)}"
        self._fence = held + self._not_paused
        # A pause refused a checkpoint (then written anyway): stop at the next step boundary.
        self.pause_pending = False
        # Checkpoints not written yet: the last step's, and pending steps completed since.
        self._deferred: list[CheckpointWrite] = []
        self._in_atomic = False

    def _value(self, when: datetime) -> Any:
        return connections[self.using].ops.adapt_datetimefield_value(when)

    def _execute(self, sql: str, params: list[Any], step_id: str) -> None:
        try:
            with connections[self.using].cursor() as cursor:
                cursor.execute(sql, params)
                written = cursor.rowcount
        except IntegrityError as exc:
            # Another execution wrote this step: it owns the run now.
            raise _LeaseLost(f"step {step_id!r} of run {self.run_id} was written by another execution") from exc
        if written != 1:
            self._refused(sql, params, step_id)

    def _refused(self, sql: str, params: list[Any], step_id: str) -> None:
        """The fence refused a write: say why (rare path, one or two queries)."""
        if stopped_by_cancel(self.run_id, self.generation, self.using):
            raise _Cancelled()
        if self._not_paused in sql and paused_here(self.run_id, self.generation, self.using):
            # Keep the step's work: write it behind the fence without the pause condition.
            self.pause_pending = True
            self._execute(sql.replace(self._not_paused, ""), params, step_id)
            return
        raise _LeaseLost(f"run {self.run_id} is no longer held at generation {self.generation}")

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Record a completed step at the next boundary or with the completion (see :meth:`flush`)."""
        q = self._q
        now = clock.now()
        finished = self._value(now)
        if exists:  # a retry that succeeded: the failed attempts' errors stay, as history
            sql = (
                f"UPDATE {self._step} SET {q('status')} = %s, {q('output')} = %s, {q('attempts')} = %s, "
                f"{q('finished_at')} = %s "
                f"WHERE {q('run_id')} = %s AND {q('step_id')} = %s AND EXISTS ({self._fence})"
            )
            params: list[Any] = [StepStatus.COMPLETED, output, attempts, finished, self.run_id, step_id]
        else:
            columns = ", ".join(q(c) for c in STEP_COLUMNS)
            # The fence's own SELECT provides the row: nothing is inserted unless it matches.
            sql = f"INSERT INTO {self._step} ({columns}) " + self._fence.replace(
                "SELECT 1", "SELECT %s, %s, %s, %s, %s, %s, %s, %s", 1
            )
            params = [
                self.run_id,
                step_id,
                kind,
                StepStatus.COMPLETED,
                output,
                attempts,
                self._value(started_at),
                finished,
            ]
        duration = (now - started_at).total_seconds()
        self._defer(CheckpointWrite(sql, [*params, self.run_id, self.generation], step_id, attempts, duration))

    def complete_pending(self, step_id: str, output: str) -> None:
        """Complete a pending sleep, wait or child-run step (fenced)."""
        q = self._q
        sql = (
            f"UPDATE {self._step} SET {q('status')} = %s, {q('output')} = %s, {q('finished_at')} = %s "
            f"WHERE {q('run_id')} = %s AND {q('step_id')} = %s AND {q('status')} = %s AND EXISTS ({self._fence})"
        )
        params = [StepStatus.COMPLETED, output, self._value(clock.now()), self.run_id, step_id, StepStatus.PENDING]
        self._defer(CheckpointWrite(sql, [*params, self.run_id, self.generation], step_id, 1, None, replayable=True))

    def _defer(self, write: CheckpointWrite) -> None:
        self._deferred.append(write)
        if self._in_atomic:  # an atomic step's checkpoint commits with its body
            self.flush()

    def flush(self, replayable: bool = False) -> None:
        """At a step boundary: write the deferred checkpoints, unless all are replayable.

        ``replayable``: write those too (an execution that ends otherwise than by completing).
        One commit (one transaction if there are several). Raises ``_Cancelled``/``_LeaseLost``
        if the fence refuses one; a refusal for a pause writes it anyway and sets
        :attr:`pause_pending`.
        """
        if not self._deferred or (not replayable and all(write.replayable for write in self._deferred)):
            return
        writes, self._deferred = self._deferred, []
        if len(writes) == 1:
            self._execute(writes[0].sql, writes[0].params, writes[0].step_id)
        else:
            with transaction.atomic(using=self.using):
                for write in writes:
                    self._execute(write.sql, write.params, write.step_id)
        for write in writes:
            self._written(write)

    @property
    def deferred(self) -> bool:
        """Whether a checkpoint waits to be written."""
        return bool(self._deferred)

    def write_deferred(self) -> None:
        """Write the deferred checkpoints inside the caller's transaction (the completion's).

        They stay deferred: if that transaction rolls back, a retry of it writes them again.
        The caller calls :meth:`settle` once it committed.
        """
        for write in self._deferred:
            self._execute(write.sql, write.params, write.step_id)

    def embedded(self) -> list[tuple[str, list[Any]]]:
        """The deferred writes as statements for a caller to embed in its own.

        For PostgreSQL's writable CTEs (:func:`~.endings.complete`). Each also requires the run to
        be ``running``: a write the completion could not join is not made.
        """
        running = f"{self._not_paused} AND {self._run}.{self._q('status')} = '{RunStatus.RUNNING}'"
        return [(write.sql.replace(self._not_paused, running), write.params) for write in self._deferred]

    def settle(self) -> None:
        """The caller's transaction that wrote the deferred checkpoints committed."""
        writes, self._deferred = self._deferred, []
        for write in writes:
            self._written(write)

    def _written(self, write: CheckpointWrite) -> None:
        """A checkpoint committed: a hook for the engine's signals."""

    def atomic(self) -> AbstractContextManager[Any]:
        """The transaction of an atomic step: its body, a fence on the run row and its checkpoint.

        The step's boundary wrote the checkpoint of the step before; replayable ones still
        deferred commit with this step's.
        """
        return _FencedAtomic(self)


class _FencedAtomic:
    """``transaction.atomic()`` that locks the run row at the end, before the checkpoint.

    The fencing UPDATE holds the run row until commit, so a takeover cannot claim the run
    between the fence and the commit: the step's writes and checkpoint are exactly-once.
    """

    def __init__(self, writer: CheckpointStore) -> None:
        self.writer = writer
        self.atomic = transaction.atomic(using=writer.using)

    def __enter__(self) -> None:
        self.atomic.__enter__()
        self.writer._in_atomic = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        self.writer._in_atomic = False
        if exc_type is None:
            try:
                held = (
                    Run.objects.using(self.writer.using)
                    .filter(id=self.writer.run_id, generation=self.writer.generation, status=RunStatus.RUNNING)
                    .update(generation=self.writer.generation)
                )
                if held != 1:
                    raise _LeaseLost(f"run {self.writer.run_id} changed hands during an atomic step")
            except BaseException as error:
                self.atomic.__exit__(type(error), error, error.__traceback__)
                raise
        self.atomic.__exit__(exc_type, exc, tb)
        return None
