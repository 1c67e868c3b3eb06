"""Pauses: the rows that hold a task (or one concurrency key of it), and the runs they hold.

A pause is a cancellation that can be undone. A run it covers is not claimed (the claim's
compare-and-set says ``NOT EXISTS`` a covering pause); a delivery refused that way moves
the run from ``queued`` to ``paused``. An executing run's next checkpoint write is refused
by the same condition in its fence: the checkpoint is then written anyway (the step's work
is kept) and the run stops at its next step boundary, ``running`` -> ``paused``. A paused run
keeps the concurrency slots it holds. :func:`resume` deletes the pause and queues the runs
it held in their original order.

The transitions lock the covering pause rows first (``SELECT ... FOR UPDATE``), so a
resume and a run being held never miss each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from .. import clock, validation
from ..exceptions import DurableConfigError
from ..models import Pause, Run
from ..states import RunStatus
from .messages import RunMessage
from .rows import message_for


@dataclass
class Resumed:
    """What a resume did: the runs queued again (in order) and the messages to publish."""

    run_ids: list[str] = field(default_factory=list)
    messages: list[RunMessage] = field(default_factory=list)
    deleted: int = 0


def check_scope(task_name: Any, key: Any) -> None:
    """A task name (non-empty text) and an optional key (text); ``DurableConfigError`` otherwise."""
    if not isinstance(task_name, str) or not task_name.strip():
        raise DurableConfigError(f"pause: task_name must be a non-empty str, got {task_name!r}")
    validation.check_text(task_name, "pause: task_name")
    if key is not None:
        if not isinstance(key, str) or not key:
            raise DurableConfigError(f"pause: key must be a non-empty str or None, got {key!r}")
        validation.check_text(key, "pause: key")
    if len(task_name) > 255 or (key is not None and len(key) > 255):
        raise DurableConfigError("pause: task_name and key are at most 255 characters")


def covering_pauses(outer: str = "") -> QuerySet[Pause]:
    """The pauses covering the run of an outer query (``OuterRef``): of its task, or of one of its keys."""
    return Pause.objects.filter(task_name=OuterRef(f"{outer}task_name")).filter(
        Q(key__isnull=True) | Q(key=OuterRef(f"{outer}slot_key1")) | Q(key=OuterRef(f"{outer}slot_key2"))
    )


def not_paused_sql(run_table: str, using: str) -> str:
    """SQL for "no pause covers the run of ``run_table``" (the claim's and the checkpoint fence's)."""
    q = connections[using].ops.quote_name
    pause = q(Pause._meta.db_table)
    return (
        f"NOT EXISTS (SELECT 1 FROM {pause} WHERE {pause}.{q('task_name')} = {run_table}.{q('task_name')} "
        f"AND ({pause}.{q('key')} IS NULL OR {pause}.{q('key')} = {run_table}.{q('slot_key1')} "
        f"OR {pause}.{q('key')} = {run_table}.{q('slot_key2')}))"
    )


def _covering(task_name: str, keys: list[str | None], using: str) -> QuerySet[Pause]:
    keys_set = [k for k in keys if k]
    return Pause.objects.using(using).filter(task_name=task_name).filter(Q(key__isnull=True) | Q(key__in=keys_set))


def pause(task_name: str, key: str | None = None, by: str = "", using: str = "default") -> tuple[Pause, bool]:
    """Pause a task (or one of its concurrency keys); ``(pause, created)``: pausing twice does nothing."""
    check_scope(task_name, key)
    validation.check_text(by, "pause: by", optional=True)
    with transaction.atomic(using=using):
        existing = Pause.objects.using(using).select_for_update().filter(task_name=task_name, key=key).first()
        if existing is not None:
            return existing, False
        created = Pause.objects.using(using).create(task_name=task_name, key=key, created_at=clock.now(), by=by[:255])
    return created, True


def resume(
    task_name: str,
    key: str | None = None,
    start_at: Callable[[str, str], datetime | None] | None = None,
    using: str = "default",
) -> Resumed:
    """Delete the pause of ``task_name`` (or of its ``key``) and queue the paused runs it held.

    Runs are queued in their original order (priority first, then call order); a run still
    covered by another pause (the whole task, or its other key) stays paused. ``start_at``
    (the engine's, called in that order inside the transaction with a run's stored
    arguments) may give a run a later start. A run held before its start time keeps it.
    Resuming what is not paused does nothing.
    """
    check_scope(task_name, key)
    outcome = Resumed()
    now = clock.now()
    with transaction.atomic(using=using):
        pauses = list(Pause.objects.using(using).select_for_update().filter(task_name=task_name, key=key))
        if not pauses:
            return outcome
        outcome.deleted = Pause.objects.using(using).filter(id__in=[p.id for p in pauses]).delete()[0]
        held = (
            Run.objects.using(using)
            .filter(task_name=task_name, status=RunStatus.PAUSED)
            .exclude(Exists(covering_pauses()))
            .order_by("-priority", "created_at", "id")
        )
        if key is not None:
            held = held.filter(Q(slot_key1=key) | Q(slot_key2=key))
        rows = list(held.select_for_update().values_list("id", "wake_at", "args", "kwargs"))
        for run_id, wake_at, args, kwargs in rows:
            later = wake_at if wake_at is not None and wake_at > now else None
            if start_at is not None:
                slot = start_at(args, kwargs)
                later = slot if later is None or (slot is not None and slot > later) else later
            changed = (
                Run.objects.using(using)
                .filter(id=run_id, status=RunStatus.PAUSED)
                .update(status=RunStatus.QUEUED, wake_at=later, published_at=None if later else now)
            )
            if changed:
                outcome.run_ids.append(run_id)
                if later is None:
                    outcome.messages.append(message_for(run_id, using))
    return outcome


def hold_queued(run_id: str, using: str = "default") -> bool:
    """A delivery the claim refused: if a pause covers the queued run, move it to ``paused``."""
    with transaction.atomic(using=using):
        row = Run.objects.using(using).filter(id=run_id).values_list("task_name", "slot_key1", "slot_key2").first()
        if row is None or not list(_covering(row[0], [row[1], row[2]], using).select_for_update()):
            return False
        return bool(
            Run.objects.using(using)
            .filter(id=run_id, status=RunStatus.QUEUED)
            .filter(Exists(covering_pauses()))
            .update(status=RunStatus.PAUSED, lease_owner=None, lease_expires_at=None)
        )


def paused_here(run_id: str, generation: int, using: str = "default") -> bool:
    """Whether the executing run (still ours at ``generation``) is covered by a pause (one query)."""
    return (
        Run.objects.using(using)
        .filter(id=run_id, generation=generation, status=RunStatus.RUNNING, cancel_requested_at__isnull=True)
        .filter(Exists(covering_pauses()))
        .exists()
    )


def hold_running(run_id: str, generation: int, using: str = "default") -> RunMessage | bool | None:
    """An executing run stopped at a step boundary for a pause: ``running`` -> ``paused``.

    ``True`` if it is paused now; a message if the pause was lifted meanwhile (the run is
    queued again, publish it); ``False`` if the run is not ours any more or a cancellation
    was requested meanwhile.
    """
    with transaction.atomic(using=using):
        row = Run.objects.using(using).filter(id=run_id).values_list("task_name", "slot_key1", "slot_key2").first()
        if row is None:
            return False
        # A cancellation requested meanwhile wins: the caller then stops the run (cancelled).
        mine = Run.objects.using(using).filter(
            id=run_id, generation=generation, status=RunStatus.RUNNING, cancel_requested_at__isnull=True
        )
        if list(_covering(row[0], [row[1], row[2]], using).select_for_update()):
            return bool(mine.update(status=RunStatus.PAUSED, lease_owner=None, lease_expires_at=None))
        if not mine.update(status=RunStatus.QUEUED, lease_owner=None, lease_expires_at=None, published_at=clock.now()):
            return False
    return message_for(run_id, using)


def pause_of(task_name: str, keys: list[str | None], using: str = "default") -> Pause | None:
    """The oldest pause covering a run of ``task_name`` with these slot keys, if any."""
    return _covering(task_name, keys, using).order_by("created_at", "id").first()
