"""``durable_prune`` never deletes what an unfinished run still needs (issue 13, findings 1 and 2)."""

import threading
import time
from datetime import timedelta

import pytest

from celery_durable import NonRetriableError, durable_task, operations, replay, step
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from celery_durable.store import prune as pruning
from tests.testapp import tasks
from tests.testapp.models import BodyRun


@durable_task(name="ps.fan")
def fan():
    return step.gather("fan", [tasks.add.s(1, 1), tasks.add.s(2, 2)])


def test_prune__keeps_a_finished_child_while_its_parent_waits_in_gather(durable):
    run = fan.delay()
    durable.run_next()  # the parent starts both children and waits in step.gather
    first = durable.run_next()  # one child finishes; the other is still queued
    assert Run.objects.get(id=first).status == RunStatus.COMPLETED
    assert Run.objects.get(id=run.id).status == RunStatus.WAITING
    later = durable.clock.now() + timedelta(days=60)

    assert operations.prune(timedelta(days=30), now=later) == 0
    assert operations.prune(timedelta(days=30), now=later, dry_run=True) == 0
    assert Run.objects.filter(id=first).exists()
    assert Step.objects.filter(run_id=first).exists()

    durable.run_until_idle()
    assert durable.result(run.id) == [2, 4]  # not a shorter, shifted list
    # Once the parent finished, its children go with it.
    assert operations.prune(timedelta(days=30), now=durable.clock.now() + timedelta(days=60)) == 3


def test_prune__a_replay_between_read_and_delete_keeps_its_checkpoints(durable):
    durable.fail_step("t.three_steps", "three", NonRetriableError("declined"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED
    later = durable.clock.now() + timedelta(days=60)

    ids = pruning.next_batch(pruning.prunable(timedelta(days=30), now=later), 10)  # prune reads the batch
    assert ids == [run.id]
    replay(run.id)  # a replay commits before prune deletes
    assert pruning.delete_batch(ids, timedelta(days=30), now=later) == 0

    assert set(Step.objects.filter(run_id=run.id).values_list("step_id", flat=True)) == {"one", "two"}
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    # The completed steps were not run again: one body run each for "one" and "two".
    assert sorted(BodyRun.objects.filter(run_id=run.id).values_list("step", flat=True)) == [
        "one",
        "three",
        "two",
    ]


def _blocked_on_a_lock(backend_id):
    """Whether the database connection ``backend_id`` waits for a row lock (a condition to poll)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", [backend_id]
            )
        else:
            cursor.execute(
                "SELECT count(*) FROM information_schema.innodb_trx "
                "WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'",
                [backend_id],
            )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_prune__a_replay_holding_the_run_row_makes_the_batch_wait_then_skip_it():
    """Two real connections: a replay that locked the run first wins; prune deletes nothing of it."""
    from django.db import connection, transaction

    from celery_durable.store import replay as replaying
    from celery_durable.testing import DurableTestRunner

    if connection.vendor not in ("postgresql", "mysql"):
        pytest.skip("row locks: SQLite serializes writers (a conflicting prune fails, it never deletes)")
    with DurableTestRunner() as durable:
        durable.fail_step("t.three_steps", "three", NonRetriableError("declined"))
        run = tasks.three_steps.delay(1)
        durable.run_until_idle()
        later = durable.clock.now() + timedelta(days=60)
        ids = pruning.next_batch(pruning.prunable(timedelta(days=30), now=later), 10)
        assert ids == [run.id]

        replay_locked, prune_blocked = threading.Event(), threading.Event()
        outcome = {}

        def replay_and_hold():
            try:
                with transaction.atomic():
                    replaying.replay(run.id)  # updates (and locks) the run row
                    replay_locked.set()
                    assert prune_blocked.wait(30)
            finally:
                connection.close()

        def prune_batch():
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT CONNECTION_ID()"
                    )
                    outcome["backend"] = cursor.fetchone()[0]
                assert replay_locked.wait(30)
                outcome["deleted"] = pruning.delete_batch(ids, timedelta(days=30), now=later)
            finally:
                connection.close()

        replayer, pruner = threading.Thread(target=replay_and_hold), threading.Thread(target=prune_batch)
        replayer.start()
        pruner.start()
        deadline = time.monotonic() + 30
        waited = False
        while time.monotonic() < deadline and not waited:
            waited = "backend" in outcome and replay_locked.is_set() and _blocked_on_a_lock(outcome["backend"])
            time.sleep(0.02)
        prune_blocked.set()
        replayer.join(30)
        pruner.join(30)

        # The guarantee: prune deleted nothing of the replayed run. That it did so by waiting for
        # the replay's row lock is what PostgreSQL shows; MariaDB's lock-wait view has missed
        # the wait under load, so there it is not asserted.
        if connection.vendor == "postgresql":
            assert waited, "prune never waited for the replay's row lock"
        assert outcome["deleted"] == 0
        assert Run.objects.get(id=run.id).status == RunStatus.QUEUED
        assert set(Step.objects.filter(run_id=run.id).values_list("step_id", flat=True)) == {"one", "two"}
