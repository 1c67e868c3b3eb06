"""Per-key concurrency: slot rows counted with conditional UPDATEs, a backlog in ``pending`` runs.

A run takes its slots when it is admitted (``pending`` -> ``queued``) or, after a suspension,
when it is claimed again; it gives them back when it finishes or suspends, and that same
transaction promotes the next pending run of the key in (``backlog_at``, id) order, so no
polling loop waits for slots. A slot held by a run that is neither queued nor running
(a crash between its transition and the release) is given back by the services' backstop.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Coalesce

from .. import clock
from ..models import Run, Slot
from ..states import HOLDING_SLOTS, RunStatus
from .messages import RunMessage
from .rows import message_for

PROMOTION_CANDIDATES = 10


_last_call: Any = None


def backlog_time(priority: int) -> Any:
    """Where a run with ``priority`` stands in every backlog: as if enqueued that much earlier.

    Calls from one process get strictly increasing times, so equal priorities keep call order.
    """
    global _last_call
    now = clock.now()
    if _last_call is not None and now <= _last_call and now.tzinfo == _last_call.tzinfo:
        now = _last_call + timedelta(microseconds=1)
    _last_call = now
    return now - timedelta(seconds=priority)


def _ensure(key: str, limit: int) -> None:
    """The slot row exists with the limit the code declares now (a deploy may change it)."""
    try:
        with transaction.atomic():
            Slot.objects.get_or_create(key=key, defaults={"limit": limit})
    except IntegrityError:
        pass  # created concurrently
    Slot.objects.filter(key=key).exclude(limit=limit).update(limit=limit)


def _take(key: str) -> bool:
    return Slot.objects.filter(key=key, in_use__lt=F("limit")).update(in_use=F("in_use") + 1) == 1


def _give(key: str) -> None:
    Slot.objects.filter(key=key, in_use__gt=0).update(in_use=F("in_use") - 1)


def acquire(run_id: str, limits: dict[str, int | None]) -> bool:
    """Take every slot of the run or none (call inside a transaction)."""
    for key, limit in limits.items():
        if limit is not None:  # every row first: a promotion later knows only the keys
            _ensure(key, limit)
    taken: list[str] = []
    for key in sorted(limits):  # a fixed order: no deadlock between two runs sharing keys
        if not _take(key):
            for held in taken:
                _give(held)
            return False
        taken.append(key)
    Run.objects.filter(id=run_id).update(holds_slots=True)
    return True


def release(run_id: str) -> list[RunMessage]:
    """Give back a finished or suspended run's slots and promote the next pending runs.

    A run with one key hands its slot straight to the head of that key's backlog when the
    head needs no other slot: one transaction, and the slot row is not touched.
    """
    with transaction.atomic():
        row = (
            Run.objects.filter(id=run_id, holds_slots=True)
            .exclude(status__in=HOLDING_SLOTS)
            .values_list("slot_key1", "slot_key2")
            .first()
        )
        if row is None:
            return []
        if Run.objects.filter(id=run_id, holds_slots=True).update(holds_slots=False) != 1:
            return []
        keys = sorted(key for key in row if key)
        if len(keys) == 1:
            handed = _hand_over(keys[0])
            if handed is not None:
                return [handed]
        for key in keys:
            _give(key)
    # Promotions run in their own transactions: holding a released slot row while taking
    # another key's row could deadlock with a concurrent release.
    return promote(keys)


def _hand_over(key: str) -> RunMessage | None:
    """Pass a released slot of ``key`` to the head of its backlog if that run needs only this key.

    Not when a lowered limit left the key over it (the slot must go back then). Locks the
    head's row only (after the releasing run's own), skipping a head that another release
    is taking; a concurrent promoter that took the head first makes the UPDATE change
    nothing, and the caller gives the slot back instead.
    """
    if not Slot.objects.filter(key=key, in_use__lte=F("limit")).exists():
        return None
    heads: list[tuple[Any, str, str | None]] = []
    for field in ("slot_key1", "slot_key2"):
        # By backlog_at alone, the backlog index's order: with ", id" PostgreSQL sorted the
        # whole backlog on every hand-over whenever its statistics lagged a growing backlog
        # (10,000 pending: ~2.5 ms each). Equal times come from different processes and
        # have no call order between them.
        pending = Run.objects.filter(status=RunStatus.PENDING, **{field: key}).order_by("backlog_at")
        if field == "slot_key1" and connection.features.has_select_for_update_skip_locked:
            # Two releases at once hand over to two runs instead of queueing on one row.
            pending = pending.select_for_update(skip_locked=True)
        heads += list(pending.values_list("backlog_at", "id", "slot_key2")[:1])
    if not heads or any(at is None for at, _id, _key in heads):
        return None  # no backlog, or one promote() orders
    _at, head, second_key = min(heads)
    if second_key is not None:
        return None  # it needs another key's slot too: promote() takes both or none
    taken = Run.objects.filter(
        id=head, status=RunStatus.PENDING, holds_slots=False, slot_key1=key, slot_key2__isnull=True
    ).update(status=RunStatus.QUEUED, published_at=clock.now(), holds_slots=True)
    return message_for(head) if taken else None


def promote(keys: list[str]) -> list[RunMessage]:
    """Start the next pending run of each key that can take all its slots (a transaction each)."""
    messages: list[RunMessage] = []
    for key in keys:
        with transaction.atomic():
            messages += _promote_one(key)
    return messages


def _promote_one(key: str) -> list[RunMessage]:
    now = clock.now()
    candidates: list[tuple[Any, str]] = []
    for field in ("slot_key1", "slot_key2"):
        pending = Run.objects.filter(status=RunStatus.PENDING, **{field: key}).order_by("backlog_at", "id")
        candidates += list(pending.values_list("backlog_at", "id")[:PROMOTION_CANDIDATES])
    for _at, run_id in sorted(candidates):
        # Take the candidate first (its row lock makes a concurrent promoter skip it), then its
        # slots; it goes back to the backlog if a slot is missing.
        if not Run.objects.filter(id=run_id, status=RunStatus.PENDING, holds_slots=False).update(
            status=RunStatus.QUEUED, published_at=now
        ):
            continue
        keys_of = Run.objects.filter(id=run_id).values_list("slot_key1", "slot_key2").get()
        if acquire(run_id, {k: None for k in keys_of if k}):
            return [message_for(run_id)]
        Run.objects.filter(id=run_id, status=RunStatus.QUEUED).update(status=RunStatus.PENDING)
    return []


def reclaim(run_id: str, generation: int, limits: dict[str, int]) -> bool:
    """A resumed run (after a sleep, wait or retry) takes its slots again, or waits in the backlog.

    ``False`` when it goes back to the backlog, or when the execution of ``generation`` no
    longer holds the run (then nothing changes).
    """
    with transaction.atomic():
        held = Run.objects.filter(id=run_id, generation=generation, status=RunStatus.RUNNING)
        # The fence, and the row lock that keeps a takeover out until this transaction ends.
        if held.update(backlog_at=Coalesce(F("backlog_at"), clock.now())) != 1:
            return False
        # A run recorded without intake (``send_task``, or created before its task declared
        # ``concurrency``) has no keys yet: without them its release would give nothing back.
        keys = sorted(limits)
        if keys:
            held.filter(slot_key1__isnull=True).update(slot_key1=keys[0], slot_key2=keys[1] if len(keys) > 1 else None)
        if acquire(run_id, dict(limits)):
            return True
        held.update(status=RunStatus.PENDING, lease_owner=None, lease_expires_at=None)
        return False


def repair(limit: int) -> list[RunMessage]:
    """Backstop: runs that hold slots but are neither queued nor running give them back."""
    leaked = Run.objects.filter(holds_slots=True).exclude(status__in=HOLDING_SLOTS).values_list("id", flat=True)[:limit]
    messages: list[RunMessage] = []
    for run_id in list(leaked):
        messages += release(run_id)
    return messages


def promote_stranded(limit: int) -> list[RunMessage]:
    """Backstop: pending runs whose keys have free slots (a release raced their suspension)."""
    keys = set(_backlog_keys(limit))
    free = set(Slot.objects.filter(key__in=keys, in_use__lt=F("limit")).values_list("key", flat=True))
    return promote(sorted(free)) if free else []


def _backlog_keys(limit: int) -> list[str]:
    """Up to ``limit`` distinct keys with pending runs.

    On PostgreSQL a recursive query probes the backlog index once per key (a "skip scan"),
    so the cost follows the number of keys, not the depth of their backlogs: one key with
    20,000 pending runs takes 0.08 ms where ``DISTINCT`` reads all 20,000 (3 ms); 1,001 keys
    with 30,000 pending cost about 2 ms either way warm, but ``DISTINCT`` took 36 ms once
    its pages were cold (bench/scale.py). Other databases use ``DISTINCT``.
    """
    if connection.vendor != "postgresql":
        pending = Run.objects.filter(status=RunStatus.PENDING, slot_key1__isnull=False)
        return [key for key in pending.values_list("slot_key1", flat=True).distinct()[:limit] if key]
    table, key, status = (connection.ops.quote_name(n) for n in (Run._meta.db_table, "slot_key1", "status"))
    sql = (
        f"WITH RECURSIVE keys(key) AS ("
        f"(SELECT {key} FROM {table} WHERE {status} = %s AND {key} IS NOT NULL ORDER BY {key} LIMIT 1) "
        f"UNION ALL SELECT (SELECT {key} FROM {table} WHERE {status} = %s AND {key} > keys.key "
        f"ORDER BY {key} LIMIT 1) FROM keys WHERE keys.key IS NOT NULL) "
        f"SELECT key FROM keys WHERE key IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [RunStatus.PENDING, RunStatus.PENDING, limit])
        return [row[0] for row in cursor.fetchall()]


def admit(run_id: str, limits: dict[str, int]) -> bool:
    """A new ``pending`` run takes every slot now and becomes ``queued``, or stays in the backlog."""
    if not acquire(run_id, dict(limits)):
        return False
    Run.objects.filter(id=run_id, status=RunStatus.PENDING).update(status=RunStatus.QUEUED, published_at=clock.now())
    return True
