"""A freed slot taken by the backlog's head in one statement (PostgreSQL).

When a run of a limited key finishes or suspends, its slot goes to the next run of the key
in the same transaction (``slots._hand_over``): read the key's slot row (is it within its
limit? is the key fair?), the oldest pending run that needs the key first and the oldest
that needs it second, then take the first with a conditional UPDATE. Four round trips on
every completion of a limited run, inside a transaction that holds the releasing run's row.
On PostgreSQL :func:`take_head` is one statement with the same conditions, in the same
order, and the same row lock (``FOR UPDATE SKIP LOCKED`` on the head: two releases at once
hand over to two runs instead of queueing on one row). A limited run's completion puts its
own UPDATE in front of the same CTEs (:func:`ctes`; ``endings.complete_handing_over``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connection

from ..models import Run, Slot
from ..states import RunStatus
from .fair import FAIR_ORDER
from .messages import DESTINATION, Claimed, RunMessage
from .pausing import not_paused_sql
from .rows import MESSAGE_FIELDS, message_from


def take_head(key: str, now: datetime) -> RunMessage | None:
    """Give the freed slot of ``key`` to the next run of its backlog; that run's message, or ``None``.

    The next run is the head of a plain key's backlog (by ``backlog_at``) unless a run that
    needs the key as its second is older (``promote()`` orders those), or a fair key's next
    run in turn (``fair.in_turn``); either way one that needs no other key and that no other
    release has locked. ``None`` as well when the key has no row within its limit (a lowered
    limit left it over): the caller gives the slot back.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {ctes()} SELECT * FROM taken", params(key, now))
        row = cursor.fetchone()
    return None if row is None else message_from(row)


@dataclass(frozen=True)
class InlineClaim:
    """The process that frees the slot will execute the run it goes to: claim that run for it.

    Only a run of ``task_name`` without a destination of its own (``integration.handoff.eligible``)
    and not paused: any other is queued and published as usual. (A backlog's run is due: one
    that waits for its ``wake_at`` is queued, not pending.)
    """

    task_name: str
    owner: str
    lease_until: datetime


def params(key: str, now: datetime, give_back: bool = False, claim: InlineClaim | None = None) -> list[Any]:
    """The parameters of :func:`ctes` (``claim``: of ``ctes(..., claim=True)``)."""
    value = connection.ops.adapt_datetimefield_value
    heads = [RunStatus.PENDING, key, RunStatus.PENDING, key, RunStatus.PENDING, key]
    if claim is None:
        taken = [RunStatus.QUEUED, value(now), True]
    else:
        taken = [RunStatus.RUNNING, RunStatus.QUEUED, value(now), True, claim.owner, value(claim.lease_until)]
        taken += [value(now), claim.task_name]
    return [key, *heads, *taken, *([key] if give_back else [])]


@cache
def ctes(gate: str = "", give_back: bool = False, claim: bool = False) -> str:
    """The hand-over as writable CTEs: ``taken`` returns the message of the run that took the slot.

    ``gate``: a condition the hand-over also needs (``AND EXISTS (SELECT 1 FROM done)``: the
    completion in the same statement). ``give_back``: a last CTE gives the slot back to the
    key's row when no run took it (and the gate holds). ``claim``: the run is also claimed
    for the releasing process when it may execute it there (:class:`InlineClaim`); ``taken``
    then returns :data:`CLAIMED_COLUMNS` after the message.
    """
    q = connection.ops.quote_name
    run, slot = q(Run._meta.db_table), q(Slot._meta.db_table)
    backlog_at, pk, status = q("backlog_at"), q("id"), q("status")
    key1, key2, in_use = q("slot_key1"), q("slot_key2"), q("in_use")
    turn_order = ", ".join(q(column) for column in FAIR_ORDER)
    message = ", ".join(f"r.{q(column)}" for column in ("id", "task_name", "args", "kwargs", "options"))
    taken = (
        # The key's row if it is within its (possibly lowered) limit.
        f"slot AS (SELECT {q('fair')} AS fair FROM {slot} "
        f"WHERE {q('key')} = %s AND {in_use} <= COALESCE({q('override')}, {q('limit')}) {gate}), "
        # A plain key: the oldest run that needs it first, locked (another release skips it).
        f"head AS (SELECT {pk}, {backlog_at}, {key2} FROM {run} WHERE {status} = %s AND {key1} = %s "
        f"AND EXISTS (SELECT 1 FROM slot WHERE NOT slot.fair) "
        f"ORDER BY {backlog_at} LIMIT 1 FOR UPDATE SKIP LOCKED), "
        # ... not taken if the oldest run that needs it second is older: promote() serves that one.
        f"second AS (SELECT {pk}, {backlog_at} FROM {run} WHERE {status} = %s AND {key2} = %s "
        f"ORDER BY {backlog_at} LIMIT 1), "
        # A fair key: its next run in turn, locked.
        f"turn AS (SELECT {pk} FROM {run} WHERE {status} = %s AND {q('fair_slot')} = %s "
        f"AND EXISTS (SELECT 1 FROM slot WHERE slot.fair) "
        f"ORDER BY {turn_order} LIMIT 1 FOR UPDATE SKIP LOCKED), "
        # The run to take, one at most (a key is fair or not), found before the UPDATE reads any
        # run, which then finds it by its primary key alone: with more conditions a planner whose
        # statistics lag a growing backlog walked all of it. A pending run has its backlog_at
        # and holds no slot; a fair key is its runs' only one.
        f"taken AS (UPDATE {run} AS r SET {_claiming() if claim else _queuing()} "
        f"WHERE r.{pk} = (SELECT head.{pk} FROM head WHERE head.{key2} IS NULL AND NOT EXISTS "
        f"(SELECT 1 FROM second WHERE (second.{backlog_at}, second.{pk}) < (head.{backlog_at}, head.{pk})) "
        f"UNION ALL SELECT turn.{pk} FROM turn LIMIT 1) "
        f"RETURNING {message}, r.{q('started_at')} IS NOT NULL"
        f"{''.join(f', r.{q(column)}' for column in CLAIMED_COLUMNS) if claim else ''})"
    )
    if not give_back:
        return taken
    return (
        f"{taken}, gave AS (UPDATE {slot} SET {in_use} = {in_use} - 1 WHERE {q('key')} = %s AND {in_use} > 0 "
        f"{gate} AND NOT EXISTS (SELECT 1 FROM taken) RETURNING 1)"
    )


#: What ``taken`` returns after the message when it claims (``status``: ``running`` if it did).
CLAIMED_COLUMNS = ("status", *(field.name for field in fields(Claimed)))


def _queuing() -> str:
    """The taken run is queued: its message goes to the broker."""
    q = connection.ops.quote_name
    return f"{q('status')} = %s, {q('published_at')} = %s, {q('holds_slots')} = %s"


def _claiming() -> str:
    """The taken run is claimed for the releasing process if it may run it there, else queued.

    ``here`` is :class:`InlineClaim`'s condition, read once; the columns a claim sets
    (``claims.claim``) change only when it holds.
    """
    q = connection.ops.quote_name
    status, generation, executions = q("status"), q("generation"), q("executions")
    owner, lease, wake, started = q("lease_owner"), q("lease_expires_at"), q("wake_at"), q("started_at")
    options = f"r.{q('options')}::jsonb"
    no_destination = " AND ".join(f"COALESCE({options} ->> '{key}', '') = ''" for key in DESTINATION)
    here = f"r.{q('task_name')} = %s AND {no_destination} AND {not_paused_sql('r', 'default')}"
    columns = (status, q("published_at"), q("holds_slots"), generation, executions, owner, lease, wake, started)
    return (
        f"({', '.join(columns)}) = (SELECT CASE WHEN k.here THEN %s ELSE %s END, %s, %s, "
        f"r.{generation} + k.here::int, r.{executions} + k.here::int, "
        f"CASE WHEN k.here THEN %s ELSE r.{owner} END, CASE WHEN k.here THEN %s ELSE r.{lease} END, "
        f"CASE WHEN k.here THEN NULL ELSE r.{wake} END, "
        f"CASE WHEN k.here THEN COALESCE(r.{started}, %s) ELSE r.{started} END "
        f"FROM (SELECT {here} AS here) AS k)"
    )


def taken_message(row: Any) -> RunMessage:
    """The message of ``taken``'s row: with :class:`Claimed` when it was claimed here."""
    size = len(MESSAGE_FIELDS)
    message = message_from(tuple(row[:size]))
    if len(row) == size or row[size] != RunStatus.RUNNING:  # not claimed: CLAIMED_COLUMNS' status
        return message
    return replace(message, claimed=Claimed(*row[size + 1 :]))
