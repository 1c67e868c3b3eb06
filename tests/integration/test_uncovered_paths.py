"""Paths no other test reached: early deliveries, a broker that is down, revoke(), timeouts, recovery."""

import pytest
from celery import current_app
from django.db import DatabaseError

from celery_durable import cancel, get_run
from celery_durable.integration import publish as publish_module
from celery_durable.integration.services import tick
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from celery_durable.store import claims
from celery_durable.store.checkpoints import CheckpointStore
from celery_durable.store.suspension import child_id
from tests.integration.conftest import Published
from tests.integration.race_tools import before_statement, snapshot
from tests.testapp import fence_tasks, flows, tasks
from tests.testapp.models import BodyRun


def bodies(run_id, name):
    return BodyRun.objects.filter(run_id=run_id, step=name).count()


# --- a sleep never ends early, even when its message is delivered early ---


def test_sleep__a_countdown_message_delivered_before_wake_at_suspends_the_run_again(durable, real_publish, deliver):
    run = flows.sleepy.delay(3600)
    deliver(run.id)
    wake_at = get_run(run.id).wake_at
    durable.clock.advance(3600 - 0.05)  # within the waker's lead (PUBLISH_LEAD, 0.1 s)
    assert tick(current_app).woken == 1
    ((task_id, headers),) = real_publish.messages
    assert task_id == run.id and headers["eta"] is not None  # published ahead, with a countdown
    deliver(run.id)  # delivered at once (a worker whose clock runs ahead; a broker ignoring the eta)
    record = get_run(run.id)
    assert (record.status, record.wake_at) == (RunStatus.SLEEPING, wake_at)
    assert bodies(run.id, "after") == 0
    assert Step.objects.get(run_id=run.id, step_id="nap").status == "pending"
    durable.clock.advance(0.5)
    assert tick(current_app).woken == 1
    deliver(run.id)
    assert durable.result(run.id) == 2
    assert (bodies(run.id, "before"), bodies(run.id, "after")) == (1, 1)


def test_countdown__a_message_delivered_before_its_time_is_dropped(durable, deliver):
    run = tasks.add.apply_async((1, 2), countdown=10)
    before = snapshot()
    deliver(run.id)
    assert snapshot() == before
    durable.clock.advance(10)
    assert deliver(run.id) == 3


# --- .delay() while the broker is down ---


@pytest.fixture
def broker_down(durable):
    """The test app's broker is a closed port on 127.0.0.1 (connection refused at once)."""
    conf = current_app.conf
    saved = {name: conf[name] for name in ("broker_url", "broker_connection_retry", "task_publish_retry")}
    conf.broker_url = "amqp://guest:guest@127.0.0.1:1//"
    conf.broker_connection_retry = False
    conf.task_publish_retry = False
    current_app._pool = None
    current_app.amqp._producer_pool = None
    publish_module.dispatch_override = None
    yield
    conf.update(saved)
    current_app._pool = None
    current_app.amqp._producer_pool = None
    publish_module.dispatch_override = durable.published.append


@pytest.mark.django_db(transaction=True)
def test_delay_while_the_broker_is_down__records_the_run_and_the_sweeper_publishes_it_later(
    durable, broker_down, settings, deliver
):
    settings.CELERY_DURABLE = {"REPUBLISH_AFTER_SECONDS": 60}
    run = tasks.add.delay(2, 3)  # publishing fails after the commit: the caller is not told
    assert get_run(run.id).status == RunStatus.QUEUED
    with Published() as published:
        assert tick(current_app).republished == 0  # the broker is still down
        assert published.ids() == []
    current_app.conf.broker_url = "memory://"  # the broker is back
    current_app._pool = None
    current_app.amqp._producer_pool = None
    durable.clock.advance(61)
    with Published() as published:
        assert tick(current_app).republished == 1
    assert published.ids() == [run.id]
    assert deliver(run.id) == 5


# --- AsyncResult.revoke() cancels the run ---


def test_revoke__cancels_a_queued_run_which_never_runs(durable):
    result = tasks.three_steps.delay(1)
    result.revoke()
    record = get_run(result.id)
    assert (record.status, record.cancel_reason) == (RunStatus.CANCELLED, "revoked")
    assert durable.run_until_idle() == 0
    assert bodies(result.id, "one") == 0


def test_revoke__of_an_executing_run_stops_it_at_its_next_step_boundary(durable):
    result = tasks.three_steps.delay(1)
    claim = claims.claim(result.id, "worker-a", 30)
    result.revoke()
    assert get_run(result.id).cancel_requested_at is not None
    from celery_durable.exceptions import _Cancelled

    writer = CheckpointStore(result.id, claim.generation)
    writer.save_output("one", "run", "2", 1, durable.clock.now(), False)
    with pytest.raises(_Cancelled):  # its next checkpoint is refused: it stops there
        writer.flush()


# --- Timeouts(start=) and Timeouts(finish=) ---


def test_timeouts_start__cancels_a_run_still_in_the_backlog_but_not_one_that_started(durable):
    first = fence_tasks.start_deadline.delay("k", 3600)  # takes the key's slot, then sleeps an hour
    second = fence_tasks.start_deadline.delay("k", 0)
    durable.run_next()
    assert get_run(first.id).status == RunStatus.SLEEPING
    assert get_run(second.id).status == RunStatus.QUEUED  # the slot was handed over, not yet started
    durable.clock.advance(61)
    durable.wake_due()
    late = get_run(second.id)
    assert (late.status, late.cancel_reason) == (RunStatus.CANCELLED, "timed out (Timeouts.start)")
    assert bodies(second.id, "one") == 0
    durable.run_until_idle()
    assert durable.result(first.id) == "k"  # it started in time: the start deadline no longer applies


def test_timeouts_finish__a_run_executing_at_its_deadline_stops_at_the_next_boundary(durable):
    """The waker asks an executing run to stop; its step in progress is not checkpointed."""
    run = fence_tasks.finish_deadline.delay()

    def deadline_passes():
        durable.clock.advance(61)
        durable.wake_due()

    fence_tasks.DURING_STEP.append(deadline_passes)
    try:
        durable.run_until_idle(advance_clock=False)
    finally:
        fence_tasks.DURING_STEP.clear()
    record = get_run(run.id)
    assert (record.status, record.cancel_reason) == (RunStatus.CANCELLED, "timed out (Timeouts.finish)")
    assert (bodies(run.id, "one"), bodies(run.id, "two")) == (1, 0)
    assert durable.history(run.id) == []


# --- the reaper and a cancellation requested before the worker died ---


def test_reaper__cancels_a_run_whose_cancel_was_requested_before_its_worker_died(durable):
    run = tasks.three_steps.delay(1)
    claim = claims.claim(run.id, "worker-a", 30)
    CheckpointStore(run.id, claim.generation).save_output("one", "run", "2", 1, durable.clock.now(), False)
    assert cancel(run.id, "stop please").status == RunStatus.RUNNING  # requested; then the worker dies
    durable.published.clear()
    durable.clock.advance(31)
    report = tick(current_app)
    assert report.recovered == 0
    record = get_run(run.id)
    assert (record.status, record.cancel_reason, record.recoveries) == (RunStatus.CANCELLED, "stop please", 0)
    assert durable.published == []  # not requeued
    assert current_app.AsyncResult(run.id).state == "FAILURE"  # the result backend was told
    assert durable.run_until_idle() == 0


# --- a parent that recovers re-creates the same children, once ---


@pytest.mark.django_db(transaction=True)
def test_parent_recovering_after_its_worker_died_in_the_children_transaction__creates_the_same_children_once(
    durable, deliver
):
    run = fence_tasks.fan_out.delay(3)

    def worker_dies():  # the connection breaks in the middle of the children's INSERTs
        raise DatabaseError("server closed the connection unexpectedly")

    expected = [child_id(run.id, "fan", index) for index in range(3)]
    with before_statement(rf"^\s*INSERT\s+INTO\s+\S*{Run._meta.db_table}\S*\s", worker_dies, times=1) as fired:
        outcome = deliver(run.id)
    assert fired, outcome
    assert get_run(run.id).status == RunStatus.RUNNING  # abandoned to its lease: nothing committed
    assert not Run.objects.filter(parent_id=run.id).exists()
    durable.clock.advance(31)
    assert tick(current_app).recovered == 1
    durable.run_until_idle()
    assert durable.result(run.id) == [0, 2, 4]
    children = Run.objects.filter(parent_id=run.id).order_by("child_index")
    assert list(children.values_list("id", "executions")) == [(cid, 1) for cid in expected]
    assert [bodies(cid, f"work-{index}") for index, cid in enumerate(expected)] == [1, 1, 1]


def test_parent_replayed_after_a_child_failed__keeps_the_completed_children_and_re_creates_the_failed_one(
    durable,
):
    BodyRun.objects.create(run_id="-", step="broken")  # child 0 fails
    run = fence_tasks.fan_out.delay(2)
    durable.run_until_idle()
    assert get_run(run.id).status == RunStatus.FAILED
    first, second = (child_id(run.id, "fan", index) for index in range(2))
    statuses = dict(Run.objects.filter(parent_id=run.id).values_list("id", "status"))
    assert statuses == {first: "failed", second: "completed"}
    completed = second
    from celery_durable import replay

    BodyRun.objects.filter(step="broken").delete()  # the cause is fixed
    replay(run.id, from_step="fan")  # (a plain replay raises the checkpointed ChildRunFailed again)
    durable.run_until_idle()
    assert durable.result(run.id) == [0, 2]
    children = dict(Run.objects.filter(parent_id=run.id).values_list("id", "executions"))
    assert set(children) == {first, second}
    assert children[completed] == 1 and bodies(completed, "work-1") == 1  # not run again
    assert bodies(first, "work-0") == 2
