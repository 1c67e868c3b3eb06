"""The ORM checkpoint writer: one fenced INSERT per new step.

A checkpoint is written with ``INSERT ... SELECT ... FROM run WHERE id=%s AND generation=%s``:
one statement (no read before it, one commit in autocommit mode) that writes nothing if
another execution has claimed the run since (fencing). The ORM cannot express an
INSERT from a SELECT, hence the SQL; it is portable across PostgreSQL, MySQL/MariaDB and
SQLite.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connections, transaction

from .exceptions import _LeaseLost
from .models import Run, RunStatus, Step, StepStatus


def _sql_names(using: str) -> dict[str, str]:
    q = connections[using].ops.quote_name
    return {
        "step": q(Step._meta.db_table),
        "run": q(Run._meta.db_table),
        "cols": ", ".join(
            q(c) for c in ("run_id", "step_id", "kind", "status", "output", "attempts", "started_at", "finished_at")
        ),
        "output": q("output"),
        "status": q("status"),
        "attempts": q("attempts"),
        "finished_at": q("finished_at"),
        "error": q("error"),
        "run_id": q("run_id"),
        "step_id": q("step_id"),
        "id": q("id"),
        "generation": q("generation"),
    }


class OrmCheckpointWriter:
    """Writes checkpoints of one execution, fenced by the generation it claimed."""

    def __init__(self, run_id: str, generation: int, using: str = "default", task_name: str = "") -> None:
        self.task_name = task_name
        self.run_id = run_id
        self.generation = generation
        self.using = using
        self._names = _sql_names(using)

    def _value(self, when: datetime) -> Any:
        return connections[self.using].ops.adapt_datetimefield_value(when)

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Record a completed step; raise ``_LeaseLost`` if this execution no longer owns the run."""
        from . import clock

        n = self._names
        finished = self._value(clock.now())
        if exists:
            sql = (
                f"UPDATE {n['step']} SET {n['status']} = %s, {n['output']} = %s, {n['attempts']} = %s, "
                f"{n['finished_at']} = %s, {n['error']} = NULL "
                f"WHERE {n['run_id']} = %s AND {n['step_id']} = %s AND EXISTS ("
                f"SELECT 1 FROM {n['run']} WHERE {n['run']}.{n['id']} = %s AND {n['run']}.{n['generation']} = %s)"
            )
            params: list[Any] = [
                StepStatus.COMPLETED,
                output,
                attempts,
                finished,
                self.run_id,
                step_id,
                self.run_id,
                self.generation,
            ]
        else:
            sql = (
                f"INSERT INTO {n['step']} ({n['cols']}) "
                f"SELECT %s, %s, %s, %s, %s, %s, %s, %s FROM {n['run']} "
                f"WHERE {n['run']}.{n['id']} = %s AND {n['run']}.{n['generation']} = %s"
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
                self.run_id,
                self.generation,
            ]
        try:
            with connections[self.using].cursor() as cursor:
                cursor.execute(sql, params)
                written = cursor.rowcount
        except IntegrityError as exc:
            # Another execution wrote this step: it owns the run now.
            raise _LeaseLost(f"step {step_id!r} of run {self.run_id} was written by another execution") from exc
        if written != 1:
            raise _LeaseLost(f"run {self.run_id} is no longer held at generation {self.generation}")
        from . import signals

        if signals.step_completed.has_listeners(self.task_name):
            duration = (clock.now() - started_at).total_seconds()
            signals.send(
                signals.step_completed,
                self.task_name,
                self.run_id,
                step_id=step_id,
                attempt=attempts,
                duration=duration,
            )

    def atomic(self) -> AbstractContextManager[Any]:
        """The transaction of an atomic step: its body, a fence on the run row and its checkpoint."""
        return _FencedAtomic(self)


class _FencedAtomic:
    """``transaction.atomic()`` that locks the run row at the end, before the checkpoint.

    The fencing UPDATE holds the run row until commit, so a takeover cannot claim the run
    between the fence and the commit: the step's writes and checkpoint are exactly-once.
    """

    def __init__(self, writer: OrmCheckpointWriter) -> None:
        self.writer = writer
        self.atomic = transaction.atomic(using=writer.using)

    def __enter__(self) -> None:
        self.atomic.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
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
