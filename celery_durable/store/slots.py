"""Per-key concurrency: slot rows counted with conditional UPDATEs, a backlog in ``pending`` runs.

A run takes its slots when it is admitted (``pending`` -> ``queued``) or, after a suspension,
when it is claimed again; it gives them back when it finishes or suspends, and that same
transaction promotes the next pending run of the key in (``backlog_at``, id) order, or a fair
key's next run in turn (store/fair.py), so no polling loop waits for slots. A slot held by a
run that is neither queued nor running (a crash between its transition and the release) is
given back by the services' backstop.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce

from .. import clock
from ..models import Run, Slot
from ..states import HOLDING_SLOTS, RunStatus
from . import handover
from .compiled import CompiledSelect, CompiledUpdate
from .fair import in_turn, not_behind_the_head
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

    A fair key (``Concurrency(fair_key=...)``) is marked ``fair``.
    """
    try:
        with transaction.atomic():
            Slot.objects.get_or_create(key=key, defaults={"limit": limit, "fair": fair})
    except IntegrityError:
        pass  # created concurrently
    Slot.objects.filter(key=key).exclude(limit=limit).update(limit=limit)
    if fair:
        Slot.objects.filter(key=key, fair=False).update(fair=True)


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
            .values_list("slot_key1", "slot_key2")
            .first()
        )
        if row is None or Run.objects.filter(id=run_id, holds_slots=True).update(holds_slots=False) != 1:
            return None
        return row

    return hand_on(clear) or []


#: A run's ``(slot_key1, slot_key2)``.
SlotKeys = tuple[str | None, str | None]


def hand_on(clear: Callable[[], SlotKeys | None]) -> list[RunMessage] | None:
    """Hand a run's freed slots on, in the transaction where ``clear`` cleared its ``holds_slots``.

    ``clear`` returns the run's slot keys, or ``None`` (it held none: ``None`` is returned).
    One key goes straight to its next run (``_hand_over``). Otherwise
    every slot goes back and the keys are promoted after the commit: holding a released slot
    row while taking another key's row could deadlock with a concurrent release.
    """
    with transaction.atomic():
        slot_keys = clear()
        if slot_keys is None:
            return None
        keys = sorted(key for key in slot_keys if key)
        if len(keys) == 1:
            handed = _hand_over(keys[0])
            if handed is not None:
                return [handed]
        for key in keys:
            _give(key)
    return promote(keys)


def _hand_over(key: str) -> RunMessage | None:
    """Pass a released slot of ``key`` to the next run of its backlog if that run needs only this key.

    Not when a lowered limit left the key over it (the slot must go back then). The next run
    is the backlog's head, or a fair key's next run in turn (``fair.in_turn``). Locks that
    run's row only (after the releasing run's own), skipping a run that another release is
    taking; a concurrent promoter that took it first makes the UPDATE change nothing, and
    the caller gives the slot back instead.
    """
    if connection.vendor == "postgresql":
        return handover.take_head(key, clock.now())  # the same, in one statement
    within_limit = _SLOT_WITHIN_LIMIT.rows(key)  # the key's row unless a lowered limit left it over
    if not within_limit:
        return None
    is_fair = within_limit[0][0]
    message = _next_in_turn(key) if is_fair else _backlog_head(key)
    if message is None:
        return None
    taken = _TAKE_HEAD.count(message.run_id, key, clock.now())
    return message if taken else None


def _skip_locked(pending: QuerySet[Run]) -> QuerySet[Run]:
    """Two releases at once hand over to two runs instead of queueing on one row."""
    if connection.features.has_select_for_update_skip_locked:
        return pending.select_for_update(skip_locked=True)
    return pending


def _next_in_turn(key: str) -> RunMessage | None:
    """A fair key's next run in turn, read with its message; ``None`` when no fair run waits."""
    row = _skip_locked(in_turn(key)).values_list(*MESSAGE_FIELDS).first()
    return None if row is None else message_from(row)


def _head_of(field: str) -> CompiledSelect:
    """The oldest pending run whose ``field`` is the key: (backlog_at, slot_key2, *MESSAGE_FIELDS)."""

    def head(key: str) -> QuerySet[Any, Any]:
        # By backlog_at alone, the backlog index's order: with ", id" PostgreSQL sorted the
        # whole backlog on every hand-over whenever its statistics lagged a growing backlog
        # (10,000 pending: ~2.5 ms each). Equal times come from different processes and
        # have no call order between them.
        pending = Run.objects.filter(status=RunStatus.PENDING, **{field: key}).order_by("backlog_at")
        if field == "slot_key1":
            pending = _skip_locked(pending)
        return pending.values_list("backlog_at", "slot_key2", *MESSAGE_FIELDS)[:1]

    return CompiledSelect(head, _KEY)


#: Placeholder of the key in the compiled hand-over queries (no key is ever this string).
_KEY = "\x00celery_durable.slots.key"
_SLOT_WITHIN_LIMIT = CompiledSelect(
    lambda key: Slot.objects.filter(key=key, in_use__lte=EFFECTIVE_LIMIT).values_list("fair"), _KEY
)
_BACKLOG_HEAD = {field: _head_of(field) for field in ("slot_key1", "slot_key2")}
_TAKE_HEAD = CompiledUpdate(
    lambda run_id, key, now: (
        Run.objects.filter(
            id=run_id, status=RunStatus.PENDING, holds_slots=False, slot_key1=key, slot_key2__isnull=True
        ),
        {"status": RunStatus.QUEUED, "published_at": now, "holds_slots": True},
    ),
    "\x00celery_durable.slots.run_id",
    _KEY,
    datetime(1970, 1, 1, 0, 0, 0, 123457, tzinfo=UTC),
)


def _backlog_head(key: str) -> RunMessage | None:
    """The head of ``key``'s backlog, unless a run that needs it second is older (``promote()`` serves it)."""
    heads = _BACKLOG_HEAD["slot_key1"].rows(key) + _BACKLOG_HEAD["slot_key2"].rows(key)
    if not heads or any(row[0] is None for row in heads):
        return None  # no backlog, or one promote() orders
    head = min(heads, key=lambda row: (row[0], row[2]))  # by backlog_at, then id
    # A head that needs another key's slot too is not taken (_TAKE_HEAD: promote() takes both).
    return message_from(head[2:])  # read with the head: no query after the UPDATE


def promote(keys: list[str]) -> list[RunMessage]:
    """Start the next pending run of each key that can take all its slots (a transaction each)."""
    messages: list[RunMessage] = []
    for key in keys:
        with transaction.atomic():
            messages += _promote_one(key)
    return messages


def _promote_one(key: str) -> list[RunMessage]:
    now = clock.now()
    # A fair key's runs in turn; the others (recorded without a fair value) when none waits.
    candidates = list(in_turn(key).values_list("id", flat=True)[:PROMOTION_CANDIDATES])
    if not candidates:
        plain: list[tuple[Any, str]] = []
        for field in ("slot_key1", "slot_key2"):
            pending = Run.objects.filter(status=RunStatus.PENDING, **{field: key}).order_by("backlog_at", "id")
            plain += list(pending.values_list("backlog_at", "id")[:PROMOTION_CANDIDATES])
        candidates = [run_id for _at, run_id in sorted(plain)]
    for run_id in candidates:
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
        if len(keys) == 1:  # a fair concurrency has one key
            not_behind_the_head(run_id, keys[0])
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
