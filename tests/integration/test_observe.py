"""OBSERVE_PLAIN_TASKS: plain Celery tasks recorded as one-step runs, in-process (Celery's tracer)."""

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from celery_durable import DurableConfigError, cancel, get_run, replay
from celery_durable.conf import get_settings
from celery_durable.exceptions import RunStateError
from celery_durable.integration.observe import UNRECORDABLE
from celery_durable.models import Run, Step
from celery_durable.store.recovery import take_due, take_expired, take_unpublished
from tests.testapp import observe_tasks, tasks

pytestmark = pytest.mark.django_db

OBSERVE = {"OBSERVE_PLAIN_TASKS": ["obs.*"]}


def test_off_by_default__plain_tasks_leave_no_trace():
    observe_tasks.double.apply((3,))
    assert not Run.objects.exists()


@override_settings(CELERY_DURABLE=OBSERVE)
def test_a_plain_task__is_a_completed_one_step_run():
    result = observe_tasks.double.apply((21,))
    assert result.get() == 42
    run = Run.objects.get(id=result.id)
    assert (run.task_name, run.status, run.durable, run.executions) == ("obs.double", "completed", False, 1)
    assert (run.args_value, run.result_value) == ([21], 42)
    assert run.started_at <= run.finished_at
    step = Step.objects.get(run=run)
    assert (step.step_id, step.status, step.attempts, step.output_value) == ("run", "completed", 1, 42)


@override_settings(CELERY_DURABLE=OBSERVE)
def test_a_failure__is_a_failed_run_with_its_error():
    result = observe_tasks.broken.apply(("card declined",))
    assert result.failed()
    run = get_run(result.id)
    assert run.status == "failed"
    assert (run.error_value["type"], run.error_value["message"]) == ("ValueError", "card declined")
    assert Step.objects.get(run_id=result.id).status == "failed"


@override_settings(CELERY_DURABLE=OBSERVE)
def test_retries__are_attempts_of_one_run():
    result = observe_tasks.flaky.apply((2,))
    assert result.get() == 2
    run = Run.objects.get(id=result.id)
    assert (run.status, run.executions) == ("completed", 3)
    assert Step.objects.get(run=run).attempts == 3


@override_settings(CELERY_DURABLE=OBSERVE)
def test_values_that_are_not_json__are_not_recorded_and_the_task_is_unaffected():
    result = observe_tasks.opaque.apply((1,))
    assert result.successful()
    assert Run.objects.get(id=result.id).result_value == UNRECORDABLE


@override_settings(CELERY_DURABLE=OBSERVE)
def test_only_matching_plain_tasks__are_observed(durable):
    tasks.plain.apply((1,))  # "t.plain" does not match "obs.*"
    durable_run = tasks.add.delay(1, 2)
    durable.run_until_idle()
    assert list(Run.objects.values_list("id", "durable")) == [(durable_run.id, True)]


@override_settings(CELERY_DURABLE={"OBSERVE_PLAIN_TASKS": True})
def test_true__observes_every_plain_task_but_celerys_own():
    observe_tasks.double.apply((1,))
    tasks.plain.apply((1,))
    assert sorted(Run.objects.values_list("task_name", flat=True)) == ["obs.double", "t.plain"]


@override_settings(CELERY_DURABLE=OBSERVE)
def test_observing__costs_one_insert_before_and_one_transaction_after_the_task():
    observe_tasks.double.apply((0,))  # warm up (content types, connection)
    with CaptureQueriesContext(connection) as queries:
        observe_tasks.double.apply((1,))
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE")] == ["INSERT", "UPDATE", "INSERT"]


@override_settings(CELERY_DURABLE=OBSERVE)
def test_observed_runs__cannot_be_replayed_or_cancelled_and_the_services_leave_them_alone():
    failed = observe_tasks.broken.apply(("x",))
    with pytest.raises(RunStateError, match="observed plain Celery task"):
        replay(failed.id)
    running = Run.objects.create(
        id="observed-running",
        task_name="obs.double",
        status="running",
        durable=False,
        created_at=get_run(failed.id).created_at,
    )
    with pytest.raises(RunStateError, match="observed plain Celery task"):
        cancel(running.id)
    Run.objects.create(
        id="observed-retrying", task_name="obs.flaky", status="queued", durable=False, created_at=running.created_at
    )
    assert take_due(100) == [] and take_unpublished(0, 100) == []
    reaped = take_expired(20, 100)
    assert (reaped.messages, reaped.failed, reaped.cancelled) == ([], [], [])
    assert sorted(Run.objects.values_list("status", flat=True)) == ["failed", "queued", "running"]


@pytest.mark.parametrize("value", ["yes", [""], [1], {"obs.*": True}])
def test_bad_setting__is_a_named_error(value):
    with (
        override_settings(CELERY_DURABLE={"OBSERVE_PLAIN_TASKS": value}),
        pytest.raises(DurableConfigError, match="OBSERVE_PLAIN_TASKS"),
    ):
        get_settings()
