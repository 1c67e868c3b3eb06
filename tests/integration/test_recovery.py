"""Crash safety without a broker: fencing, leases, reaper, sweeper, waker, atomic steps."""

from datetime import timedelta

import pytest
from django.db import connection

from celery_durable import RunNotFound, get_run, replay
from celery_durable.exceptions import RunStateError, StepNotFound, _LeaseLost
from celery_durable.integration.services import tick
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from celery_durable.store import claims, recovery
from celery_durable.store.checkpoints import CheckpointStore
from tests.testapp import tasks
from tests.testapp.models import BodyRun, Ledger


def durable_now():
    from celery_durable import clock

    return clock.now()


def app():
    from celery import current_app

    return current_app


def test_stale_checkpoint_write__is_refused(db):
    run = tasks.add.delay(1, 2)
    first = claims.claim(run.id, "worker-a", 30)
    assert first is not None
    stale = CheckpointStore(run.id, first.generation)
    # The lease is taken over (as after an expiry): generation moves on.
    Run.objects.filter(id=run.id).update(generation=first.generation + 1)
    stale.save_output("add", "run", "3", 1, durable_now(), exists=False)
    with pytest.raises(_LeaseLost):
        stale.flush()  # the next step boundary writes it
    assert Step.objects.filter(run_id=run.id).count() == 0


def test_claim__is_a_compare_and_set(db):
    run = tasks.add.delay(1, 2)
    assert claims.claim(run.id, "a", 30) is not None
    assert claims.claim(run.id, "b", 30) is None  # live lease: the second delivery drops itself


def test_expired_lease__is_reaped_and_resumed_without_rerunning_steps(durable):
    run = tasks.three_steps.delay(1)
    claim = claims.claim(run.id, "dead-worker", 30)
    writer = CheckpointStore(run.id, claim.generation)
    writer.save_output("one", "run", "2", 1, durable_now(), exists=False)
    writer.flush()  # step one done and written at the next boundary, then crash
    durable.published.clear()
    assert tick(app()).recovered == 0  # lease still valid
    durable.clock.advance(31)
    report = tick(app())
    assert report.recovered == 1
    assert [n.run_id for n in durable.published] == [run.id]
    assert get_run(run.id).recoveries == 1
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    assert BodyRun.objects.filter(run_id=run.id, step="one").count() == 0  # replayed, not re-run
    assert BodyRun.objects.filter(run_id=run.id).count() == 2


def test_worker_lost_too_often__fails_the_run(durable, settings):
    settings.CELERY_DURABLE = {"MAX_RECOVERIES": 1}
    run = tasks.add.delay(1, 2)
    for _ in range(2):
        assert claims.claim(run.id, "dies", 30) is not None
        durable.clock.advance(31)
        tick(app())
    record = get_run(run.id)
    assert record.status == "failed"
    assert "lost 2 times" in record.error_value["message"]


def test_lost_message__is_republished_by_the_sweeper(durable, settings):
    settings.CELERY_DURABLE = {"REPUBLISH_AFTER_SECONDS": 60}
    run = tasks.add.delay(1, 2)
    durable.published.clear()  # the message was lost between commit and broker
    assert tick(app()).republished == 0
    durable.clock.advance(61)
    assert tick(app()).republished == 1
    assert [n.run_id for n in durable.published] == [run.id]
    assert tick(app()).republished == 0  # once per REPUBLISH_AFTER_SECONDS, not every tick


def test_sweeper__leaves_a_run_deep_in_a_queue_being_drained_and_republishes_it_once_passed(durable, settings):
    """Issue 14: a queued run is republished only once the queue went past it (or was idle)."""
    settings.CELERY_DURABLE = {"REPUBLISH_AFTER_SECONDS": 60}

    def claimed(run):  # a worker took the run's message and holds its lease
        lease = durable.clock.now() + timedelta(hours=1)
        Run.objects.filter(id=run.id).update(status=RunStatus.RUNNING, lease_expires_at=lease)

    first = tasks.add.delay(1, 1)
    durable.clock.advance(1)
    deep = tasks.add.delay(2, 2)
    durable.clock.advance(1)
    later = tasks.add.delay(3, 3)
    durable.published.clear()
    claimed(first)
    durable.clock.advance(61)
    assert tick(app()).republished == 0  # workers busy on earlier messages: deep and later still queued
    claimed(later)  # a message published after deep's was taken: the queue passed deep's
    assert tick(app()).republished == 1
    assert [n.run_id for n in durable.published] == [deep.id]
    durable.published.clear()
    tail = tasks.add.delay(4, 4)
    durable.clock.advance(61)
    assert tick(app()).republished == 0  # nothing published after tail was claimed
    durable.clock.advance(60 * recovery.BACKSTOP_FACTOR)
    assert tick(app()).republished == 2  # the backstop: deep (republished long ago) and tail
    assert sorted(n.run_id for n in durable.published) == sorted([deep.id, tail.id])
    Run.objects.filter(status=RunStatus.RUNNING).update(status=RunStatus.COMPLETED, lease_expires_at=None)
    durable.published.clear()
    durable.clock.advance(61)
    assert tick(app()).republished == 2  # idle workers: a queued message past its time is lost


def test_waker__publishes_due_runs_once(durable):
    run = tasks.add.apply_async((1, 2), countdown=10)
    assert tick(app()).woken == 0
    durable.clock.advance(10)
    assert tick(app()).woken == 1
    assert tick(app()).woken == 0
    assert [n.run_id for n in durable.published] == [run.id]


def test_run_of_a_task_this_process_lacks__is_sent_by_name(durable):
    """A web or services-only process may not import every task: it must not fail such runs."""
    from celery import current_app, signals

    from celery_durable.integration import publish as publish_module

    Run.objects.create(
        id="elsewhere-1",
        task_name="shop.defined_elsewhere",
        status=RunStatus.QUEUED,
        created_at=durable.clock.now(),
        wake_at=durable.clock.now(),
    )
    sent = []

    def seen(sender=None, headers=None, **kwargs):
        sent.append((sender, headers["id"]))

    publish_module.dispatch_override = None  # publish for real (to the memory broker)
    signals.after_task_publish.connect(seen, weak=False)
    try:
        assert tick(current_app).woken == 1
    finally:
        signals.after_task_publish.disconnect(seen)
        publish_module.dispatch_override = durable.published.append
    assert sent == [("shop.defined_elsewhere", "elsewhere-1")]
    assert get_run("elsewhere-1").status == RunStatus.QUEUED


def test_get_run__unknown_id_raises(db):
    with pytest.raises(RunNotFound):
        get_run("nope")
    with pytest.raises(RunNotFound):
        replay("nope")


def test_replay__resumes_a_failed_run_at_the_failed_step(durable):
    durable.fail_step("t.three_steps", "two", ConnectionError("down"), times=4)  # 1 try + 3 retries
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert get_run(run.id).status == "failed"
    assert durable.history(run.id) == [("one", "completed", 1), ("two", "failed", 4)]
    replay(run.id)  # the outage is over
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    counts = {s: BodyRun.objects.filter(run_id=run.id, step=s).count() for s in ("one", "two", "three")}
    assert counts == {"one": 1, "two": 1, "three": 1}


def test_replay__from_a_step_reruns_it_and_later_steps(durable):
    durable.fail_step("t.three_steps", "three", Exception("x"), times=4)
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert get_run(run.id).status == "failed"
    replay(run.id, from_step="two")
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    counts = {s: BodyRun.objects.filter(run_id=run.id, step=s).count() for s in ("one", "two", "three")}
    assert counts == {"one": 1, "two": 2, "three": 1}


def test_replay__of_a_running_or_completed_run_changes_nothing(durable):
    run = tasks.add.delay(1, 2)
    with pytest.raises(RunStateError):
        replay(run.id)
    durable.run_until_idle()
    with pytest.raises(RunStateError):
        replay(run.id)
    assert get_run(run.id).status == "completed"


def test_replay__from_an_unknown_step_changes_nothing(durable):
    run = tasks.non_retriable.delay()
    durable.run_until_idle()
    with pytest.raises(StepNotFound):
        replay(run.id, from_step="nope")
    assert get_run(run.id).status == "failed"


@pytest.mark.django_db(transaction=True)
def test_atomic_step__commits_with_its_checkpoint(deliver):
    run = tasks.atomic_task.delay(10, False)
    assert deliver(run.id) == 10
    assert list(Ledger.objects.filter(run_id=run.id).values_list("amount", flat=True)) == [10]
    assert Step.objects.get(run_id=run.id).status == "completed"


@pytest.mark.django_db(transaction=True)
def test_atomic_step__rolls_back_with_its_checkpoint(deliver):
    run = tasks.atomic_task.delay(10, True)
    deliver(run.id)
    assert Ledger.objects.filter(run_id=run.id).count() == 0
    assert get_run(run.id).status == "failed"
    assert list(Step.objects.filter(run_id=run.id).values_list("status", flat=True)) == ["failed"]


@pytest.mark.django_db(transaction=True)
def test_atomic_step__of_a_stale_execution_writes_nothing(deliver):
    run = tasks.atomic_task.delay(10, False)
    claim = claims.claim(run.id, "a", 30)
    writer = CheckpointStore(run.id, claim.generation)
    Run.objects.filter(id=run.id).update(generation=claim.generation + 1)  # taken over
    with pytest.raises(_LeaseLost), writer.atomic():
        Ledger.objects.create(run_id=run.id, amount=99)
        writer.save_output("write", "run", "99", 1, durable_now(), exists=False)
    assert Ledger.objects.filter(run_id=run.id).count() == 0


@pytest.mark.django_db(transaction=True)
def test_database_connection_lost_mid_run__resumes_without_losing_checkpoints(durable):
    if connection.vendor != "postgresql":
        pytest.skip("terminating a session needs PostgreSQL")
    from tests.testapp import tasks as t

    run = t.connection_killer.delay()
    durable.run_until_idle(advance_clock=False)
    record = get_run(run.id)
    assert record.status == "running"  # abandoned: the lease will expire
    assert list(Step.objects.filter(run_id=run.id).values_list("step_id", flat=True)) == ["before"]
    durable.clock.advance(31)
    tick(app())
    durable.run_until_idle()
    assert durable.result(run.id) == "after"
    assert BodyRun.objects.filter(run_id=run.id, step="before").count() == 1


def test_durable_services_command__runs_one_tick(durable):
    import io

    from django.core.management import call_command

    tasks.add.apply_async((1, 2), countdown=5)
    durable.clock.advance(5)
    out = io.StringIO()
    call_command("durable_services", "--once", stdout=out)
    assert "woken=1" in out.getvalue()
    assert len(durable.published) == 1


def test_idle_tick__is_one_query_whatever_is_in_the_tables(durable):
    from django.test.utils import CaptureQueriesContext

    tasks.add.apply_async((1, 2), countdown=3600)  # sleeping, not due
    tasks.add.delay(1, 2)  # queued, recently published
    with CaptureQueriesContext(connection) as queries:
        report = tick(app(), backstops=False)
    assert report == type(report)()  # nothing done
    assert len(queries) == 1
    durable.clock.advance(3600)
    assert tick(app(), backstops=False).woken == 1  # the probe sees a due run


@pytest.mark.django_db(transaction=True)
def test_services_thread__drains_a_backlog_of_due_runs_without_waiting_between_full_batches(settings):
    from celery_durable.integration import publish as publish_module
    from celery_durable.integration.services import ServiceThread
    from tests.e2e.conftest import wait_for

    # One batch of 2 per WAKER_INTERVAL of an hour: only "no wait after a full batch" drains 7 due runs.
    settings.CELERY_DURABLE = {"WAKER_BATCH_SIZE": 2, "WAKER_INTERVAL": 3600, "HEARTBEAT_SECONDS": 10}
    published = []
    publish_module.dispatch_override = published.append
    past = durable_now() - timedelta(seconds=5)
    for n in range(7):
        Run.objects.create(id=f"due-{n}", task_name="t.add", status=RunStatus.SLEEPING, created_at=past, wake_at=past)
    thread = ServiceThread(app())
    thread.start()
    try:
        wait_for(lambda: not Run.objects.filter(status=RunStatus.SLEEPING).exists(), 30, "every due run to be woken")
    finally:
        thread.stop()
        publish_module.dispatch_override = None
    assert sorted(n.run_id for n in published) == [f"due-{n}" for n in range(7)]


def _other_sessions():
    """Database session ids of this test database other than the test thread's own."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        else:
            cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
        return {row[0] for row in cursor.fetchall()}


def _end_session(session):
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", [session])
        else:
            cursor.execute(f"KILL {int(session)}")


@pytest.mark.django_db(transaction=True)
def test_services_thread__keeps_its_connection_and_recovers_when_the_database_drops_it(settings):
    """Issue 14: no reconnect per tick; a session the database ended is replaced at the next tick."""
    from celery_durable.integration import publish as publish_module
    from celery_durable.integration.services import ServiceThread
    from tests.e2e.conftest import wait_for

    settings.CELERY_DURABLE = {"WAKER_INTERVAL": 0.05, "HEARTBEAT_SECONDS": 10}
    published = []
    publish_module.dispatch_override = published.append
    thread = ServiceThread(app())
    thread.start()
    try:
        wait_for(lambda: thread.ticks >= 1, 30, "a first tick")
        kept = thread.connection.wrapper.connection
        assert kept is not None  # still open between ticks
        ticks = thread.ticks
        wait_for(lambda: thread.ticks >= ticks + 3, 30, "three more ticks")
        assert thread.connection.wrapper.connection is kept  # the same connection: no reconnect
        if connection.vendor in ("postgresql", "mysql"):
            sessions = _other_sessions()
            assert len(sessions) == 1  # the services thread's one session
            _end_session(sessions.pop())
        past = durable_now() - timedelta(seconds=5)
        Run.objects.create(
            id="due-after-drop", task_name="t.add", status=RunStatus.SLEEPING, created_at=past, wake_at=past
        )
        wait_for(lambda: [m.run_id for m in published] == ["due-after-drop"], 30, "the due run to be woken")
    finally:
        thread.stop()
        publish_module.dispatch_override = None
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_services_thread__closes_its_connection_before_the_process_forks(settings):
    """A prefork child must not inherit the services thread's live database session."""
    import os

    from celery_durable.integration import publish as publish_module
    from celery_durable.integration.services import ServiceThread
    from tests.e2e.conftest import wait_for

    settings.CELERY_DURABLE = {"WAKER_INTERVAL": 0.05, "HEARTBEAT_SECONDS": 10}
    published = []
    publish_module.dispatch_override = published.append
    thread = ServiceThread(app())
    thread.start()
    try:
        wait_for(lambda: thread.connection.wrapper is not None and thread.ticks >= 1, 30, "a first tick")
        with thread.connection.lock:  # between ticks: the connection is open
            kept = thread.connection.wrapper.connection
            assert kept is not None
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # the child does nothing: a prefork child at birth
        os.waitpid(pid, 0)
        ticks = thread.ticks
        past = durable_now() - timedelta(seconds=5)
        Run.objects.create(
            id="due-after-fork", task_name="t.add", status=RunStatus.SLEEPING, created_at=past, wake_at=past
        )
        wait_for(lambda: [m.run_id for m in published] == ["due-after-fork"], 30, "the due run to be woken")
        assert thread.ticks > ticks
        # Closed before the fork (by the forking thread), connected again by the next tick.
        assert thread.connection.wrapper.connection is not kept
    finally:
        thread.stop()
        publish_module.dispatch_override = None
