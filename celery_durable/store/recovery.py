"""The services' transitions: wake due runs, republish lost messages, reap expired leases.

Each takes a batch of rows locked with ``SKIP LOCKED`` (where the database has it), so two
services loops never take the same run; each returns the messages to publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connections, transaction
from django.db.models import F
from django.utils.dateparse import parse_datetime

from .. import clock, serialization
from ..models import BatchItem, Run
from ..states import FINISHED, WAKEABLE, RunStatus
from .cancellation import stop_abandoned
from .messages import RunMessage
from .rows import locked_ids, locked_messages, messages_for, queued_again
from .suspension import child_finished


def take_due(limit: int, horizon: float = 0.0, using: str = "default") -> list[RunMessage]:
    """Runs whose wake time comes within ``horizon`` seconds: queue them and return their messages.

    A run due in the future gets a broker countdown of at most ``horizon`` seconds.
    """
    now = clock.now()
    until = now + timedelta(seconds=horizon)
    with transaction.atomic(using=using):
        due = Run.objects.using(using).filter(status__in=WAKEABLE, wake_at__lte=until).order_by("wake_at")
        taken = locked_messages(due, limit, using)
        if not taken:
            return []
        Run.objects.using(using).filter(
            id__in=[message.run_id for message, _ in taken], status__in=WAKEABLE, wake_at__lte=until
        ).update(**queued_again(now))
        return [
            RunMessage(
                m.run_id, m.task_name, m.args, m.kwargs, m.options, _countdown(at or now, now), at or now, m.resume
            )
            for m, at in taken
        ]


@dataclass(frozen=True)
class Pending:
    """What the services have to do: ``next_wake`` is the earliest wake time within the horizon."""

    next_wake: datetime | None
    other: bool  # lost messages, expired leases, deadlines or due batches

    def wakes(self, lead: float, now: datetime) -> bool:
        """Whether a run wakes within ``lead`` seconds of ``now``."""
        return self.next_wake is not None and self.next_wake <= now + timedelta(seconds=lead)


def work_pending(horizon: float, republish_after: float, using: str = "default") -> Pending:
    """What the waker, the timeouts, the sweeper, the reaper and batching have to do now.

    One round trip of index probes, so that an idle tick costs one query whatever the size
    of the tables. The waker's probe returns the earliest wake time within ``horizon``
    seconds, so that the services loop can sleep until just before it.
    """
    now = clock.now()
    runs = Run.objects.using(using)
    unfinished = runs.exclude(status__in=FINISHED).filter(cancel_requested_at__isnull=True)
    # Each probe is a scalar subquery ordered like the query it stands for, so that it reads
    # the same index (PostgreSQL drops ORDER BY and LIMIT inside EXISTS, and then may scan
    # the table when it expects many matches).
    wake = runs.filter(status__in=WAKEABLE, wake_at__lte=now + timedelta(seconds=horizon)).order_by("wake_at")
    probes = [
        runs.filter(
            status=RunStatus.QUEUED, wake_at__isnull=True, published_at__lt=now - timedelta(seconds=republish_after)
        ).order_by("published_at"),
        runs.filter(status=RunStatus.RUNNING, lease_expires_at__lt=now).order_by("lease_expires_at"),
        unfinished.filter(finish_by__lt=now).order_by("finish_by"),
        unfinished.filter(start_by__lt=now, started_at__isnull=True).order_by("start_by"),
        BatchItem.objects.using(using).filter(run__isnull=True, due_at__lte=now).order_by("due_at"),
    ]
    wake_sql, params = wake.values("wake_at")[:1].query.get_compiler(using).as_sql()
    parts = []
    for probe in probes:
        sql, probe_params = probe.values("id")[:1].query.get_compiler(using).as_sql()
        parts.append(f"({sql}) IS NOT NULL")
        params = (*params, *probe_params)
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT ({wake_sql}), " + " OR ".join(parts), params)
        row = cursor.fetchone()
    return Pending(next_wake=None if row[0] is None else _aware(row[0]), other=bool(row[1]))


def _countdown(wake_at: datetime, now: datetime) -> float | None:
    seconds = (wake_at - now).total_seconds()
    return seconds if seconds > 0.001 else None


# Statuses a run reaches only by being claimed from its message (or cancelled, which only
# makes the sweeper republish sooner): their ``published_at`` tells how far the queue went.
_CLAIMED = (
    RunStatus.RUNNING,
    RunStatus.SLEEPING,
    RunStatus.WAITING,
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
)
# Past this many REPUBLISH_AFTER_SECONDS a queued run is republished whatever the watermark.
BACKSTOP_FACTOR = 10


def queue_progress(using: str = "default") -> tuple[datetime | None, bool]:
    """``(watermark, busy)`` of the broker queues, in one query of index probes.

    The watermark is the latest ``published_at`` of a run that left ``queued`` (a worker
    claimed the message published then); busy means some run holds a live lease.
    """
    now = clock.now()
    runs = Run.objects.using(using)
    probes = [
        runs.filter(status=status, published_at__isnull=False).order_by("-published_at").values("published_at")[:1]
        for status in _CLAIMED
    ]
    busy = runs.filter(status=RunStatus.RUNNING, lease_expires_at__gte=now).order_by("lease_expires_at")
    parts, params = [], []
    for probe in [*probes, busy.values("id")[:1]]:
        sql, probe_params = probe.query.get_compiler(using).as_sql()
        parts.append(f"({sql})")
        params.extend(probe_params)
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        row = cursor.fetchone()
    stamps = [_aware(value) for value in row[:-1] if value is not None]
    return (max(stamps) if stamps else None), row[-1] is not None


def _aware(value: datetime | str) -> datetime:
    """A timestamp read by a raw query (SQLite returns text; SQLite and MySQL store naive UTC)."""
    stamp = parse_datetime(value) if isinstance(value, str) else value
    if stamp is None:
        raise ValueError(f"not a timestamp: {value!r}")
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def take_unpublished(republish_after: float, limit: int, using: str = "default") -> list[RunMessage]:
    """Queued runs whose message may have been lost (commit then crash, broker restart).

    A run queued for ``republish_after`` seconds is republished unless it is merely deep in
    a queue that workers are draining: some run holds a live lease, and no run published
    after it has been claimed yet (the queue has not reached it). Past ``BACKSTOP_FACTOR``
    times ``republish_after`` it is republished anyway. See docs/architecture.md (sweeper).
    """
    now = clock.now()
    stale = now - timedelta(seconds=republish_after)
    watermark, busy = queue_progress(using) if republish_after > 0 else (None, False)
    with transaction.atomic(using=using):
        lost = (
            Run.objects.using(using)
            .filter(status=RunStatus.QUEUED, wake_at__isnull=True, published_at__lt=stale)
            .order_by("published_at")
        )
        if busy:
            # Passed by the queue (a later message was claimed) or queued for very long.
            backstop = now - timedelta(seconds=republish_after * BACKSTOP_FACTOR)
            lost = lost.filter(published_at__lt=max(watermark, backstop) if watermark else backstop)
        taken = [message for message, _ in locked_messages(lost, limit, using)]
        if not taken:
            return []
        Run.objects.using(using).filter(
            id__in=[message.run_id for message in taken], status=RunStatus.QUEUED, published_at__lt=stale
        ).update(published_at=now)
        return taken


@dataclass
class Reaped:
    """What the reaper did: runs to publish again, runs failed for good, runs cancelled."""

    messages: list[RunMessage]
    failed: list[str]
    cancelled: list[str]
    requeued: list[str] = field(default_factory=list)  # after a lost worker (the rest of messages: parents)


def take_expired(max_recoveries: int, limit: int, using: str = "default") -> Reaped:
    """Reaper: requeue runs whose lease expired (their worker died).

    A run whose worker died more than ``max_recoveries`` times fails (a task that kills its
    worker every time); one whose cancellation was requested is cancelled, not requeued.
    """
    now = clock.now()
    with transaction.atomic(using=using):
        expired = (
            Run.objects.using(using)
            .filter(status=RunStatus.RUNNING, lease_expires_at__lt=now)
            .order_by("lease_expires_at")
        )
        ids = locked_ids(expired, limit, using)
        if not ids:
            return Reaped([], [], [])
        runs = Run.objects.using(using).filter(id__in=ids, status=RunStatus.RUNNING, lease_expires_at__lt=now)
        stopping = list(runs.filter(cancel_requested_at__isnull=False).values_list("id", flat=True))
        stopped = stop_abandoned(stopping, using)
        runs = runs.exclude(id__in=stopping)
        ids = [run_id for run_id in ids if run_id not in stopping]
        doomed = list(runs.filter(recoveries__gte=max_recoveries).values_list("id", flat=True))
        parents = list(runs.filter(id__in=doomed, parent_id__isnull=False).values_list("parent_id", flat=True))
        if doomed:
            error = serialization.dumps(
                {
                    "type": "WorkerLost",
                    "module": "celery_durable.exceptions",
                    "message": f"the run's worker was lost {max_recoveries + 1} times; giving up "
                    f"(CELERY_DURABLE['MAX_RECOVERIES'])",
                    "traceback": "",
                },
                "error record",
            )
            runs.filter(id__in=doomed).update(
                status=RunStatus.FAILED, error=error, finished_at=now, lease_owner=None, lease_expires_at=None
            )
        requeue = [run_id for run_id in ids if run_id not in doomed]
        runs.filter(id__in=requeue).update(
            status=RunStatus.QUEUED,
            recoveries=F("recoveries") + 1,
            lease_owner=None,
            lease_expires_at=None,
            published_at=now,
        )
        resumed = [child_finished(parent, using) for parent in parents]
        messages = messages_for(requeue, using) + [n for n in resumed if n is not None] + stopped.messages
        return Reaped(messages, doomed, stopped.cancelled, requeue)
