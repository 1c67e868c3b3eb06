"""``store.compiled``: a statement compiled once does what the queryset it came from does."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.db.models import ExpressionWrapper, Q
from django.db.models.fields import BooleanField
from django.test.utils import CaptureQueriesContext

from celery_durable import clock
from celery_durable.models import Run
from celery_durable.states import RunStatus
from celery_durable.store.compiled import CompiledSelect, CompiledUpdate


def backlog(key, status):
    """A query with a converted datetime, a computed boolean and two values in the WHERE clause."""
    return (
        Run.objects.filter(slot_key1=key, status=status)
        .order_by("backlog_at", "id")
        .values_list("id", "backlog_at", ExpressionWrapper(Q(started_at__isnull=False), output_field=BooleanField()))
    )


HEADS = CompiledSelect(backlog, "placeholder-key", "placeholder-status")


@pytest.fixture
def runs(durable):
    now = clock.now()
    for n, (key, status) in enumerate([("a", "pending"), ("a", "pending"), ("b", "pending"), ("a", "queued")]):
        Run.objects.create(
            id=f"run-{n}",
            task_name="t.any",
            created_at=now,
            backlog_at=now - timedelta(seconds=n),
            slot_key1=key,
            status=status,
            started_at=now if n == 1 else None,
        )


def test_rows__equal_the_querysets_for_every_value(runs):
    for key in ("a", "b", "nobody"):
        for status in (RunStatus.PENDING, RunStatus.QUEUED):
            assert HEADS.rows(key, status) == list(backlog(key, status))
    assert HEADS.rows("a", RunStatus.PENDING)[0][1:] == (Run.objects.get(id="run-1").backlog_at, True)


def test_rows__one_statement_per_call_seen_by_djangos_cursor(runs):
    HEADS.rows("a", RunStatus.PENDING)  # compiled
    with CaptureQueriesContext(connection) as captured:
        HEADS.rows("b", RunStatus.PENDING)
        HEADS.rows("a", RunStatus.QUEUED)
    assert [query["sql"].split()[0] for query in captured] == ["SELECT", "SELECT"]


@pytest.mark.django_db(transaction=True)
def test_rows__in_another_thread_compile_for_that_threads_connection(runs):
    assert HEADS.rows("a", RunStatus.PENDING)
    seen = []

    def other():
        try:
            seen.append(HEADS.rows("b", RunStatus.PENDING))
        finally:
            connection.close()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [[("run-2", Run.objects.get(id="run-2").backlog_at, False)]]


def test_rows__the_wrong_number_of_values_is_refused(durable):
    with pytest.raises(TypeError, match="expected 2 values, got 1"):
        HEADS.rows("a")


def test_a_placeholder_that_is_no_parameter__is_refused_at_the_first_call(durable):
    folded = CompiledSelect(lambda n: Run.objects.values_list("id")[:n], 3)  # the limit is written into the SQL
    with pytest.raises(RuntimeError, match="not a parameter"):
        folded.rows(1)


def test_select_for_update__keeps_its_lock_clause(durable):
    locking = CompiledSelect(lambda key: Run.objects.select_for_update().filter(slot_key1=key).values_list("id"), "k")
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        assert locking.rows("nobody") == []
    if connection.features.has_select_for_update:
        assert "FOR UPDATE" in captured[0]["sql"]


def take(run_id, key, now):
    return (
        Run.objects.filter(id=run_id, status=RunStatus.PENDING, slot_key1=key),
        {"status": RunStatus.QUEUED, "published_at": now},
    )


TAKE = CompiledUpdate(take, "placeholder-id", "placeholder-key", datetime(1970, 1, 1, 0, 0, 0, 123457, tzinfo=UTC))


def test_update__changes_and_counts_what_update_does__a_datetime_among_the_values(runs):
    later = clock.now() + timedelta(minutes=5)
    with CaptureQueriesContext(connection) as captured:
        assert TAKE.count("run-0", "a", later) == 1
        assert TAKE.count("run-0", "a", later) == 0  # no longer pending
        assert TAKE.count("run-2", "a", later) == 0  # another key's run
    assert [query["sql"].split()[0] for query in captured] == ["UPDATE"] * 3
    queryset, changes = take("run-1", "a", later)
    assert queryset.update(**changes) == 1
    taken = {run.id: (run.status, run.published_at) for run in Run.objects.filter(id__in=["run-0", "run-1"])}
    assert taken == {"run-0": (RunStatus.QUEUED, later), "run-1": (RunStatus.QUEUED, later)}
    assert Run.objects.get(id="run-2").status == RunStatus.PENDING
