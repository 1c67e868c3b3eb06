"""What a reader of a failed chaos run needs when runs did not finish: why each one is stuck.

CI shows the assertion message and little else, so :func:`stuck` packs into a few lines per
run what decides whether a run can move: its row (status, stamps, slot), whether another
session holds its row lock (a lock held by a lost session makes every waker and sweeper
skip it: they take rows with ``SKIP LOCKED``), the claims and step attempts it had, the
database sessions of the fleet, and the services' warnings in each worker's log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from django.db import DatabaseError, connection, transaction

from celery_durable.models import Run
from tests.testapp.models import ChaosAttempt, ChaosClaim

from . import procs

SHOWN_RUNS = 4
LOG_LINES = 6
# Worker log lines worth showing: warnings and errors (the services', the heartbeat's, Celery's).
NOTABLE = re.compile(r"(WARNING|ERROR|CRITICAL)/")


def _moment(value) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3] if value else "-"


def _row_locked(run_id: str) -> str:
    """``"locked"`` if another session holds the run's row lock now, else ``"free"``."""
    if connection.vendor != "postgresql":
        return "?"
    try:
        with transaction.atomic():
            Run.objects.select_for_update(nowait=True).filter(id=run_id).exists()
    except DatabaseError:
        return "locked"
    return "free"


def _run_lines(run_id: str) -> list[str]:
    run = Run.objects.filter(id=run_id).first()
    if run is None:
        return [f"run {run_id}: no row"]
    claims = ", ".join(
        f"#{c.execution} pid {c.pid} {_moment(c.at)}" for c in ChaosClaim.objects.filter(run_id=run_id).order_by("at")
    )
    attempts = ", ".join(
        f"{a.step}#{a.n} pid {a.pid} {_moment(a.started)}-{_moment(a.ended)}"
        for a in ChaosAttempt.objects.filter(run_id=run_id).order_by("started")
    )
    return [
        f"run {run_id} {run.task_name}{tuple(run.args_value)}: {run.status}, row {_row_locked(run_id)}, "
        f"published {_moment(run.published_at)}, wake {_moment(run.wake_at)}, "
        f"lease {run.lease_owner or '-'} until {_moment(run.lease_expires_at)}, executions {run.executions}, "
        f"recoveries {run.recoveries}, slot {run.slot_key1 or '-'} held {run.holds_slots}, "
        f"cancel {_moment(run.cancel_requested_at)}",
        f"  claims [{claims}]; attempts [{attempts}]",
    ]


def _sessions(tag: str) -> list[str]:
    """The fleet's database sessions that are in a transaction or waiting (PostgreSQL)."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name, state, clock_timestamp() - xact_start, wait_event_type, wait_event, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s "
            "AND (xact_start IS NOT NULL OR wait_event_type = 'Lock') ORDER BY xact_start",
            [f"{tag}:%"],
        )
        rows = cursor.fetchall()
    return [f"session {name}: {state}, transaction for {age}, wait {kind}/{event}: {query}"
            for name, state, age, kind, event, query in rows]  # fmt: skip


def _log_lines(workers: Iterable[procs.Worker]) -> list[str]:
    lines = []
    for worker in workers:
        state = "alive" if worker.alive() else "exited"
        notable = [line for line in _read(worker.log).splitlines() if NOTABLE.search(line)]
        lines.append(f"worker {worker.name} ({state}): {len(notable)} notable log lines, the last:")
        lines.extend(f"  {line[:200]}" for line in notable[-LOG_LINES:])
    return lines


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def stuck(run_ids: list[str], tag: str, workers: Iterable[procs.Worker]) -> str:
    """A few lines per unfinished run, then the fleet's open sessions and log complaints."""
    if not run_ids:
        return ""
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (at,) = cursor.fetchone()
    lines = [f"{len(run_ids)} unfinished at {_moment(at)}:"]
    for run_id in run_ids[:SHOWN_RUNS]:
        lines.extend(_run_lines(run_id))
    lines.extend(_sessions(tag))
    lines.extend(_log_lines(workers))
    return "\n".join(lines)
