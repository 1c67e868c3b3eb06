"""How an execution ends its run: complete, fail, or retry a step later.

Each is one conditional UPDATE, fenced by the generation the execution claimed and by
``status = running`` (a reaped or taken-over execution changes nothing); a child run also
counts itself done in its parent in the same transaction. On PostgreSQL the last step's
checkpoint and the completion are one statement (writable CTEs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import QuerySet

from .. import clock, serialization
from ..models import Run, Step
from ..states import RunStatus, StepStatus
from . import handover, slots
from .messages import RunMessage
from .slots import SlotKeys
from .suspension import child_finished


def _held(run_id: str, generation: int, using: str) -> QuerySet[Run]:
    return Run.objects.using(using).filter(id=run_id, generation=generation, status=RunStatus.RUNNING)


def complete(
    run_id: str,
    generation: int,
    result: str,
    parent_id: str | None = None,
    using: str = "default",
    before: Callable[[], None] | None = None,
    embedded: Sequence[tuple[str, list[Any]]] = (),
) -> RunMessage | bool | None:
    """Finish a run with its JSON result; ``False`` if the execution no longer holds it.

    A child run also counts itself done in its parent, and returns the parent's message
    when it was the last child. ``before`` writes in the same transaction, first (the last
    step's checkpoint); it is rolled back with the completion when the run is not held.
    ``embedded`` are the same writes as statements: on PostgreSQL a top-level run makes them
    and completes in one statement, and only if that changed nothing does ``before`` decide.
    """
    if parent_id is None and before is None:  # the hot path of a run without steps: one statement
        return None if complete_sql(run_id, generation, result, using) == 1 else False
    one_statement = parent_id is None and embedded and connections[using].vendor == "postgresql"
    if one_statement and complete_sql(run_id, generation, result, using, embedded=embedded) == 1:
        return None
    with transaction.atomic(using=using):
        if before is not None:
            before()
        if complete_sql(run_id, generation, result, using) != 1:
            transaction.set_rollback(True, using=using)
            return False
        return None if parent_id is None else child_finished(parent_id, using)


def complete_releasing(
    run_id: str,
    generation: int,
    result: str,
    slot_keys: SlotKeys,
    before: Callable[[], None] | None = None,
    embedded: Sequence[tuple[str, list[Any]]] = (),
    claim: handover.InlineClaim | None = None,
) -> list[RunMessage] | None:
    """Complete a top-level run that holds its slots and hand them on, in one transaction.

    The completion's own UPDATE clears ``holds_slots``; a second transaction that reads the
    run again is not needed. ``before`` writes first, as in :func:`complete`. Returns the
    runs promoted into the freed slots, or ``None`` when nothing was written (the execution
    no longer holds the run, or the run holds no slots): the caller then completes it the
    plain way (:func:`complete`), which tells the two apart. On PostgreSQL a run of one key
    does it all in one statement (:func:`complete_handing_over`; ``embedded``: ``before``'s
    writes as statements; ``claim``: the run that takes the slot is claimed for this process
    when it may execute it here, see ``handover.InlineClaim``).
    """
    keys = [key for key in slot_keys if key]
    one_statement = connections["default"].vendor == "postgresql" and (before is None or embedded)
    if len(keys) == 1 and one_statement:
        return complete_handing_over(run_id, generation, result, keys[0], embedded, claim)

    def clear() -> SlotKeys | None:
        if before is not None:
            before()
        if complete_sql(run_id, generation, result, "default", True) == 1:
            return slot_keys
        transaction.set_rollback(True)  # ``before`` too: the plain completion writes it again
        return None

    return slots.hand_on(clear)


def complete_sql(
    run_id: str,
    generation: int,
    result: str,
    using: str,
    releasing: bool = False,
    embedded: Sequence[tuple[str, list[Any]]] = (),
) -> int:
    """The completion as one UPDATE statement: the hot path of every run, so no ORM layers.

    ``releasing``: the run gives its concurrency slots back in the same statement (it must
    hold them: ``holds_slots`` is part of the condition); the caller hands them on in the
    same transaction (:func:`complete_releasing`). ``embedded`` (PostgreSQL): writes made
    in the same statement as writable CTEs, each a condition of the completion.
    """
    ctes, update, params = _completion(run_id, generation, result, using, releasing, embedded, clock.now())
    with connections[using].cursor() as cursor:
        cursor.execute(f"{f'WITH {ctes} ' if ctes else ''}{update}", params)
        return int(cursor.rowcount)


def _completion(
    run_id: str,
    generation: int,
    result: str,
    using: str,
    releasing: bool,
    embedded: Sequence[tuple[str, list[Any]]],
    now: datetime,
) -> tuple[str, str, list[Any]]:
    """The completion's statement: the embedded writes as CTEs, its UPDATE, and their parameters."""
    connection = connections[using]
    q = connection.ops.quote_name
    release = f", {q('holds_slots')} = %s" if releasing else ""
    held = f" AND {q('holds_slots')} = %s" if releasing else ""
    ctes = ", ".join(f"w{n} AS ({sql} RETURNING 1)" for n, (sql, _params) in enumerate(embedded))
    joined = "".join(f" AND EXISTS (SELECT 1 FROM w{n})" for n in range(len(embedded)))
    update = (
        f"UPDATE {q(Run._meta.db_table)} SET {q('status')} = %s, {q('result')} = %s, {q('finished_at')} = %s, "
        f"{q('lease_owner')} = NULL, {q('lease_expires_at')} = NULL{release} "
        f"WHERE {q('id')} = %s AND {q('generation')} = %s AND {q('status')} = %s{held}{joined}"
    )
    params = [
        *(param for _sql, embedded_params in embedded for param in embedded_params),
        RunStatus.COMPLETED,
        result,
        connection.ops.adapt_datetimefield_value(now),
        *([False] if releasing else []),
        run_id,
        generation,
        RunStatus.RUNNING,
        *([True] if releasing else []),
    ]
    return ctes, update, params


def complete_handing_over(
    run_id: str,
    generation: int,
    result: str,
    key: str,
    embedded: Sequence[tuple[str, list[Any]]] = (),
    claim: handover.InlineClaim | None = None,
) -> list[RunMessage] | None:
    """PostgreSQL: complete a top-level run that holds one key's slot and hand it on, in one statement.

    The embedded writes (the last checkpoints), the completion (it clears ``holds_slots``),
    the hand-over (``handover.ctes``) and, when no run took the slot, its give-back: all or
    nothing. Without embedded writes it needs no transaction: no ``BEGIN`` and ``COMMIT``
    round trips around it.
    Returns the runs promoted into the slot (after a give-back, ``promote()`` looks for a
    run that needs two keys), or ``None`` when the completion changed nothing: the caller's
    plain completion then decides. With ``claim``, the run that took the slot may come back
    claimed for this process (``RunMessage.claimed``): it must be executed here, not published.
    """
    connection = connections["default"]
    now = clock.now()
    ctes, update, params = _completion(run_id, generation, result, "default", True, embedded, now)
    gate = "AND EXISTS (SELECT 1 FROM done)"
    hand_over = handover.ctes(gate, give_back=True, claim=claim is not None)
    sql = (
        f"WITH {f'{ctes}, ' if ctes else ''}done AS ({update} RETURNING 1), {hand_over} "
        f"SELECT (SELECT count(*) FROM done), taken.* FROM (SELECT 1) AS one LEFT JOIN taken ON TRUE"
    )
    # The embedded writes need the completion as much as it needs them: when it is refused
    # (the run no longer holds its slot) they are rolled back, for the plain completion. Inside
    # the caller's transaction a savepoint keeps a failed statement from breaking that one.
    with transaction.atomic() if embedded or connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, *handover.params(key, now, give_back=True, claim=claim)])
            done, *taken = cursor.fetchone()
        if not done and embedded:
            transaction.set_rollback(True)  # the embedded writes too
    if not done:
        return None
    if taken[0] is not None:
        return [handover.taken_message(taken)]
    return slots.promote([key])


def fail(
    run_id: str,
    generation: int,
    error: dict[str, Any],
    step: tuple[str, int] | None = None,
    parent_id: str | None = None,
    using: str = "default",
) -> RunMessage | bool | None:
    """Fail a run (recording the failed step, if any) in one transaction.

    ``False`` if the execution no longer holds the run; a child run returns its parent's
    message when it was the last child.
    """
    now = clock.now()
    error_json = serialization.dumps(error, "error record")
    with transaction.atomic(using=using):
        failed = _held(run_id, generation, using).update(
            status=RunStatus.FAILED,
            error=error_json,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        if failed != 1:
            return False
        if step is not None:
            _record_step_failure(run_id, step[0], step[1], error_json, now, using)
        if parent_id is not None:
            return child_finished(parent_id, using)
    return None


def retry_step(
    run_id: str,
    generation: int,
    step_id: str,
    attempts: int,
    error: dict[str, Any],
    delay: float,
    publish_within: float,
    using: str = "default",
) -> RunMessage | bool | None:
    """Record a failed attempt and queue the run again after ``delay`` seconds.

    Delays up to ``publish_within`` go to the broker as a short countdown; longer ones wait
    in the database for the waker. Returns the message to publish, ``None`` when the waker
    will publish it, or ``False`` if the execution no longer holds the run.
    """
    now = clock.now()
    error_json = serialization.dumps(error, "error record")
    wake_at = now + timedelta(seconds=delay)
    short = delay <= publish_within
    with transaction.atomic(using=using):
        queued = (
            _held(run_id, generation, using)
            .filter(cancel_requested_at__isnull=True)
            .update(
                status=RunStatus.QUEUED,
                wake_at=None if short else wake_at,
                published_at=now if short else None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if queued != 1:
            return False
        _record_step_failure(run_id, step_id, attempts, error_json, now, using)
        if not short:
            return None
        run = Run.objects.using(using).only("task_name", "args", "kwargs", "options").get(id=run_id)
    return RunMessage(run_id, run.task_name, run.args, run.kwargs, run.options, countdown=delay or None, resume=True)


#: Earlier failed attempts kept in a step's error record (``earlier``), newest last.
EARLIER_ATTEMPTS_KEPT = 20


def _record_step_failure(run_id: str, step_id: str, attempts: int, error_json: str, now: datetime, using: str) -> None:
    """Record a failed attempt on the step's row; the attempts before it stay in ``earlier``."""
    steps = Step.objects.using(using)
    previous = steps.filter(run_id=run_id, step_id=step_id).values_list("error", "attempts", "finished_at").first()
    if previous is None:
        steps.create(
            run_id=run_id,
            step_id=step_id,
            status=StepStatus.FAILED,
            error=error_json,
            attempts=attempts,
            started_at=now,
            finished_at=now,
        )
        return
    steps.filter(run_id=run_id, step_id=step_id).update(
        status=StepStatus.FAILED, error=_with_earlier(error_json, *previous), attempts=attempts, finished_at=now
    )


def _with_earlier(error_json: str, previous_json: str | None, previous_attempt: int, previous_at: datetime) -> str:
    """The new attempt's error record, carrying a summary of each earlier failed attempt."""
    if not previous_json:
        return error_json
    previous = serialization.loads(previous_json)
    if not isinstance(previous, dict):
        return error_json
    summary = {
        "attempt": previous_attempt,
        "type": previous.get("type", ""),
        "message": str(previous.get("message", ""))[:1000],
        "at": previous_at.isoformat() if isinstance(previous_at, datetime) else str(previous_at),
    }
    earlier = [*previous.get("earlier", []), summary][-EARLIER_ATTEMPTS_KEPT:]
    record = serialization.loads(error_json)
    return serialization.dumps({**record, "earlier": earlier}, "error record")
