"""Per-key concurrency: slot rows counted with conditional UPDATEs, a backlog in ``pending`` runs.

A run takes its slots when it is admitted (``pending`` -> ``queued``) or, after a suspension,
when it is claimed again; it gives them back when it finishes or suspends, and that same
transaction promotes the next pending run of the key in (``backlog_at``, id) order, so no
polling loop waits for slots. A slot held by a run that is neither queued nor running
(a crash between its transition and the release) is given back by the services' backstop.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce

from .. import clock
from ..models import Run, Slot
from ..options import MAX_FAIR_WEIGHT
from ..states import HOLDING_SLOTS, RunStatus
from .messages import RunMessage
from .rows import MESSAGE_FIELDS, message_for, message_from

PROMOTION_CANDIDATES = 10
#: A key's limit in force: its override (``set_limit``) if set, else the declared limit.
EFFECTIVE_LIMIT = Coalesce(F("override"), F("limit"))


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


def _ensure(key: str, limit: int, fair: bool = False) -> None:
    """The slot row exists with the limit the code declares now (a deploy may change it).

    A fair key (``Concurrency(fair_key=...)``) has a non-NULL ``fair_cursor``.
    """
    try:
        with transaction.atomic():
            Slot.objects.get_or_create(key=key, defaults={"limit": limit, "fair_cursor": "" if fair else None})
    except IntegrityError:
        pass  # created concurrently
    Slot.objects.filter(key=key).exclude(limit=limit).update(limit=limit)
    if fair:
        Slot.objects.filter(key=key, fair_cursor__isnull=True).update(fair_cursor="")


def _take(key: str) -> bool:
    return Slot.objects.filter(key=key, in_use__lt=EFFECTIVE_LIMIT).update(in_use=F("in_use") + 1) == 1


def _give(key: str) -> None:
    Slot.objects.filter(key=key, in_use__gt=0).update(in_use=F("in_use") - 1)


def acquire(run_id: str, limits: dict[str, int | None], fair: bool = False, lease_seconds: float | None = None) -> bool:
    """Take every slot of the run or none (call inside a transaction).

    ``lease_seconds``: the claimed run's lease starts again once the slots are taken, in the
    statement that marks them held (a resumed run may have waited on a slot row's lock for
    longer than its lease).
    """
    for key, limit in limits.items():
        if limit is not None:  # every row first: a promotion later knows only the keys
            _ensure(key, limit, fair)
    taken: list[str] = []
    for key in sorted(limits):  # a fixed order: no deadlock between two runs sharing keys
        if not _take(key):
            for held in taken:
                _give(held)
            return False
        taken.append(key)
    renewed = {} if lease_seconds is None else {"lease_expires_at": clock.now() + timedelta(seconds=lease_seconds)}
    Run.objects.filter(id=run_id).update(holds_slots=True, **renewed)
    return True


def release(run_id: str) -> list[RunMessage]:
    """Give back a finished or suspended run's slots and promote the next pending runs (``hand_on``)."""

    def clear() -> SlotKeys | None:
        row = (
            Run.objects.filter(id=run_id, holds_slots=True)
            .exclude(status__in=HOLDING_SLOTS)
            .values_list("slot_key1", "slot_key2", "fair_slot")
            .first()
        )
        if row is None or Run.objects.filter(id=run_id, holds_slots=True).update(holds_slots=False) != 1:
            return None
        return row

    return hand_on(clear) or []


#: A run's ``(slot_key1, slot_key2, fair_slot)``.
SlotKeys = tuple[str | None, str | None, str | None]


def hand_on(clear: Callable[[], SlotKeys | None]) -> list[RunMessage] | None:
    """Hand a run's freed slots on, in the transaction where ``clear`` cleared its ``holds_slots``.

    ``clear`` returns the run's slot keys, or ``None`` (it held none: ``None`` is returned).
    One key goes straight to its next run (round robin if ``fair_slot`` names it). Otherwise
    every slot goes back and the keys are promoted after the commit: holding a released slot
    row while taking another key's row could deadlock with a concurrent release.
    """
    with transaction.atomic():
        slot_keys = clear()
        if slot_keys is None:
            return None
        keys = sorted(key for key in slot_keys[:2] if key)
        if len(keys) == 1:
            handed = _hand_over_fair(keys[0]) if slot_keys[2] == keys[0] else _hand_over(keys[0])
            if handed is not None:
                return [handed]
        for key in keys:
            _give(key)
    return promote(keys)


def _hand_over(key: str) -> RunMessage | None:
    """Pass a released slot of ``key`` to the head of its backlog if that run needs only this key.

    Not when a lowered limit left the key over it (the slot must go back then); a fair key's
    slot goes to its next run in round robin (``_hand_over_fair``). Locks the
    head's row only (after the releasing run's own), skipping a head that another release
    is taking; a concurrent promoter that took the head first makes the UPDATE change
    nothing, and the caller gives the slot back instead.
    """
    slot = Slot.objects.filter(key=key, in_use__lte=EFFECTIVE_LIMIT).values_list("fair_cursor").first()
    if slot is None:
        return None
    if slot[0] is not None:  # a fair key: its next run in round robin, not the backlog's head
        return _hand_over_fair(key)
    heads: list[tuple[Any, ...]] = []  # (backlog_at, slot_key2, *MESSAGE_FIELDS)
    for field in ("slot_key1", "slot_key2"):
        # By backlog_at alone, the backlog index's order: with ", id" PostgreSQL sorted the
        # whole backlog on every hand-over whenever its statistics lagged a growing backlog
        # (10,000 pending: ~2.5 ms each). Equal times come from different processes and
        # have no call order between them.
        pending = Run.objects.filter(status=RunStatus.PENDING, **{field: key}).order_by("backlog_at")
        if field == "slot_key1" and connection.features.has_select_for_update_skip_locked:
            # Two releases at once hand over to two runs instead of queueing on one row.
            pending = pending.select_for_update(skip_locked=True)
        heads += list(pending.values_list("backlog_at", "slot_key2", *MESSAGE_FIELDS)[:1])
    if not heads or any(row[0] is None for row in heads):
        return None  # no backlog, or one promote() orders
    head = min(heads, key=lambda row: (row[0], row[2]))  # by backlog_at, then id
    if head[1] is not None:
        return None  # it needs another key's slot too: promote() takes both or none
    message = message_from(head[2:])  # read with the head: no query after the UPDATE
    taken = Run.objects.filter(
        id=message.run_id, status=RunStatus.PENDING, holds_slots=False, slot_key1=key, slot_key2__isnull=True
    ).update(status=RunStatus.QUEUED, published_at=clock.now(), holds_slots=True)
    return message if taken else None


def promote(keys: list[str]) -> list[RunMessage]:
    """Start the next pending run of each key that can take all its slots (a transaction each)."""
    messages: list[RunMessage] = []
    for key in keys:
        with transaction.atomic():
            messages += _promote_one(key)
    return messages


def _promote_one(key: str) -> list[RunMessage]:
    now = clock.now()
    # A fair key's slot row is locked (its cursor moves); a plain key's is not even read for
    # update (InnoDB would keep the row locked though the condition excludes it).
    fair = None
    if Slot.objects.filter(key=key, fair_cursor__isnull=False).exists():
        fair = Slot.objects.select_for_update().filter(key=key).first()
    if fair is not None:
        promoted = _promote_fair(fair, now)
        if promoted is not None:
            return promoted
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


#: ``Slot.fair_served`` once the cursor's value has had all its turns in a row (its weight):
#: the next pick goes straight to the following value, without probing the cursor's value.
TURNS_USED_UP = MAX_FAIR_WEIGHT


def _fair_pick(slot: Slot) -> tuple[str, RunMessage, int] | None:
    """Round robin over a fair key's values: the next value after the cursor, wrapping around.

    ``(value, the run's message, the slot's new fair_served)``, or ``None`` when no run of the
    key has a fair value. Call with the slot row locked: one promoter at a time moves the
    cursor. One or two indexed probes of ``(status, fair_slot, fair_value, backlog_at)``,
    whatever the backlog's depth: the cursor value's head while it has turns left (its
    weight), else the head of the next value. The probes read the run's message too.
    """
    pending = Run.objects.filter(status=RunStatus.PENDING, fair_slot=slot.key, fair_value__isnull=False)
    cursor = slot.fair_cursor or ""
    served = slot.fair_served
    if 0 < served < TURNS_USED_UP:
        same = pending.filter(fair_value=cursor).order_by("backlog_at").values_list("fair_weight", *MESSAGE_FIELDS)
        row = same.first()
        if row is not None and served < row[0]:
            return cursor, message_from(row[1:]), _served_after(served, row[0])
    following = pending.filter(fair_value__gt=cursor) if served > 0 else pending.filter(fair_value__gte=cursor)
    columns = ("fair_value", "fair_weight", *MESSAGE_FIELDS)
    row = following.order_by("fair_value", "backlog_at").values_list(*columns).first()
    if row is None:  # wrap around
        row = pending.order_by("fair_value", "backlog_at").values_list(*columns).first()
    return None if row is None else (str(row[0]), message_from(row[2:]), _served_after(0, row[1]))


def _served_after(served: int, weight: int) -> int:
    """``fair_served`` once a run of weight ``weight`` took the cursor value's next turn."""
    return served + 1 if served + 1 < weight else TURNS_USED_UP


def _promote_fair(slot: Slot, now: Any) -> list[RunMessage] | None:
    """Promote a fair key's next run (``_fair_pick``); ``None`` when no run has a fair value."""
    pick = _fair_pick(slot)
    if pick is None:
        return None
    value, message, served = pick
    if not Run.objects.filter(pk=message.run_id, status=RunStatus.PENDING, holds_slots=False).update(
        status=RunStatus.QUEUED, published_at=now
    ):
        return None  # taken meanwhile: the plain candidates are tried, as without fairness
    if not acquire(message.run_id, {slot.key: None}):
        Run.objects.filter(id=message.run_id, status=RunStatus.QUEUED).update(status=RunStatus.PENDING)
        return []
    Slot.objects.filter(pk=slot.pk).update(fair_cursor=value, fair_served=served)
    return [message]


def _hand_over_fair(key: str) -> RunMessage | None:
    """A fair key's released slot goes straight to its next run in round robin (one transaction).

    The slot row is locked (as giving the slot back would), its ``in_use`` untouched. ``None``
    when the key is over its limit, nothing fair waits, or the pick needs another key: the
    caller gives the slot back and promotes then.
    """
    slot = Slot.objects.select_for_update().filter(key=key, in_use__lte=EFFECTIVE_LIMIT).first()
    pick = None if slot is None else _fair_pick(slot)
    if slot is None or pick is None:
        return None
    value, message, served = pick
    taken = Run.objects.filter(
        pk=message.run_id, status=RunStatus.PENDING, holds_slots=False, slot_key1=key, slot_key2__isnull=True
    ).update(status=RunStatus.QUEUED, published_at=clock.now(), holds_slots=True)
    if not taken:
        return None
    Slot.objects.filter(pk=slot.pk).update(fair_cursor=value, fair_served=served)
    return message


def reclaim(run_id: str, generation: int, limits: dict[str, int], lease_seconds: float) -> bool:
    """A resumed run (after a sleep, wait or retry) takes its slots again, or waits in the backlog.

    ``False`` when it goes back to the backlog, or when the execution of ``generation`` no
    longer holds the run (then nothing changes). On success the run's lease starts again
    from now: waiting for a slot row's lock (a release in a stalled worker) must not let
    the lease the claim took run out before the body has even started, while no heartbeat
    covers it, and hand the run to a second execution.
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
        if acquire(run_id, dict(limits), lease_seconds=lease_seconds):
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
    free = set(Slot.objects.filter(key__in=keys, in_use__lt=EFFECTIVE_LIMIT).values_list("key", flat=True))
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


def admit(run_id: str, limits: dict[str, int], fair: bool = False) -> bool:
    """A new ``pending`` run takes every slot now and becomes ``queued``, or stays in the backlog."""
    if not acquire(run_id, dict(limits), fair):
        return False
    Run.objects.filter(id=run_id, status=RunStatus.PENDING).update(status=RunStatus.QUEUED, published_at=clock.now())
    return True


def oldest_holder(key: str) -> str | None:
    """The oldest run holding a slot of ``key`` and not yet asked to cancel (``cancel_oldest``)."""
    holders = Run.objects.filter(Q(slot_key1=key) | Q(slot_key2=key), holds_slots=True, status__in=HOLDING_SLOTS)
    return (
        holders.filter(cancel_requested_at__isnull=True)
        .order_by("created_at", "id")
        .values_list("id", flat=True)
        .first()
    )


def set_override(key: str, limit: int | None) -> tuple[int | None, int | None]:
    """Set (or with ``None`` remove) the override of ``key``; the previous and new override.

    A key never used yet gets its row now (its declared limit is written by its first run).
    Lowering stops no run: the key admits nothing until enough of its runs finish.
    """
    with transaction.atomic():
        if limit is not None:
            try:
                with transaction.atomic():
                    Slot.objects.get_or_create(key=key, defaults={"limit": limit})
            except IntegrityError:
                pass  # created concurrently
        slot = Slot.objects.select_for_update().filter(key=key).first()
        if slot is None:
            return None, None
        previous = slot.override
        Slot.objects.filter(pk=slot.pk).update(override=limit)
    return previous, limit


def fill(key: str) -> list[RunMessage]:
    """Promote the backlog of ``key`` until its slots are full (after a limit was raised)."""
    messages: list[RunMessage] = []
    while Slot.objects.filter(key=key, in_use__lt=EFFECTIVE_LIMIT).exists():
        promoted = promote([key])
        if not promoted:
            break
        messages += promoted
    return messages
