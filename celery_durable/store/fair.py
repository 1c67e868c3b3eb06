"""Fair backlogs (``Concurrency(fair_key=...)``): a run's turn is fixed when it is called.

Each run of a fair key gets a *round* when it is recorded (start-time fair queueing): the
round after its value's last waiting run (or the same round while that value has turns
left in it, its weight), and never a round the backlog has already left behind (the head's
round). The backlog is served in ``(fair_round, fair_value, backlog_at)`` order: round by
round, every waiting value once (its weight's turns) per round in text order, and priority
then call order within one value. A hand-over is therefore one probe of the
``durable_run_fair_turn`` index, like a plain key's backlog head, with no shared cursor to
lock: concurrent hand-overs of one key skip each other's rows instead of queueing.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from ..models import Run
from ..states import RunStatus

#: The order a fair key's backlog is served in (the ``durable_run_fair_turn`` index).
FAIR_ORDER = ("fair_round", "fair_value", "backlog_at")


def in_turn(key: str) -> QuerySet[Run]:
    """The fair runs waiting for ``key``, in the order they get its slots."""
    return Run.objects.filter(status=RunStatus.PENDING, fair_slot=key).order_by(*FAIR_ORDER)


def round_for(key: str, value: str, weight: int, backlog_at: datetime) -> int:
    """The round of a new run of fair ``value`` on ``key``, placed at ``backlog_at`` in its value.

    One indexed probe whatever the backlog's depth: the last ``weight`` runs of the same value
    ahead of the new one; a second (the head's round) only for the value's first waiting run.
    Calls of one value made at the same instant from two processes may share a round (that
    value gets one turn more in it).
    """
    ahead = (
        in_turn(key)
        .filter(fair_value=value, backlog_at__lt=backlog_at)
        .order_by("-backlog_at")
        .values_list("fair_round", flat=True)[:weight]
    )
    rounds = list(ahead)
    if not rounds:  # the value's first waiting run: its turn in the round being served
        current = in_turn(key).values_list("fair_round", flat=True).first()
        return 0 if current is None else current  # (nothing waits: a new backlog starts)
    # The value's turns in the round of its last waiting run (never behind the head's round).
    turns = sum(1 for r in rounds if r == rounds[0])
    return rounds[0] + 1 if turns >= weight else rounds[0]


def not_behind_the_head(run_id: str, key: str) -> None:
    """A fair run going back to the backlog (resumed, its key full) waits in the round being served.

    Its round came from its call, maybe from a backlog that has drained since (a new one
    starts again at round 0): without this it would wait behind every round up to its own.
    """
    head = in_turn(key).values_list("fair_round", flat=True).first()
    if head is not None:
        Run.objects.filter(id=run_id, fair_slot=key, fair_round__gt=head).update(fair_round=head)


def ahead_of(run: Run) -> Q:
    """The fair runs served before ``run`` on its fair key (``explain``'s count)."""
    earlier_in_value = Q(fair_value=run.fair_value, backlog_at__lt=run.backlog_at)
    same_round = Q(fair_round=run.fair_round) & (Q(fair_value__lt=run.fair_value) | earlier_in_value)
    return Q(fair_slot=run.fair_slot) & (Q(fair_round__lt=run.fair_round) | same_round)
