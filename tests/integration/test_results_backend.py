"""``DurableResultBackend``: a durable run's result is read from its run row, stored nowhere else.

Runs are executed in-process by ``DurableTestRunner`` on the test database; the backend reads
what they left. Plain tasks' results go to ``PLAIN_RESULT_BACKEND`` (django-celery-results here).
"""

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from celery import current_app, states
from celery.exceptions import SecurityError
from celery.result import AsyncResult
from django_celery_results.models import TaskResult

from celery_durable import DurableConfigError, NonRetriableError, RunCancelled, RunSkipped, cancel, clock
from celery_durable.conf import get_settings
from celery_durable.models import Run
from celery_durable.results import DurableResultBackend
from celery_durable.states import RunStatus
from tests.conftest import service_unavailable
from tests.testapp import batch_tasks, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(settings):
    settings.CELERY_DURABLE = {**settings.CELERY_DURABLE, "PLAIN_RESULT_BACKEND": "django-db"}
    return DurableResultBackend(app=current_app)


def result_of(backend, run_id):
    return AsyncResult(run_id, backend=backend, app=current_app)


def durable_request(task_name):
    """What Celery's tracer passes as ``request`` (its ``task`` names the task)."""
    return SimpleNamespace(task=task_name, chord=None, chain=None, errbacks=None, ignore_result=False)


def test_completed_run__get_returns_its_value_from_the_run_row(durable, backend):
    run = tasks.three_steps.delay(1)
    result = result_of(backend, run.id)
    assert result.state == states.PENDING and not result.ready()
    durable.run_until_idle()
    assert result.get(timeout=5) == 7  # ((1 + 1) * 2) + 3
    assert result.state == states.SUCCESS
    assert result.date_done == Run.objects.get(id=run.id).finished_at
    assert not TaskResult.objects.filter(task_id=run.id).exists()


def test_failed_run__get_raises_the_steps_error_type_with_its_message_and_traceback(durable, backend):
    durable.fail_step("t.three_steps", "two", NonRetriableError("card declined"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    result = result_of(backend, run.id)
    with pytest.raises(NonRetriableError, match="card declined"):
        result.get(timeout=5)
    assert result.state == states.FAILURE
    assert "card declined" in result.traceback


def test_cancelled_and_skipped_runs__raise_run_cancelled_and_run_skipped(durable, backend):
    sleeping = tasks.fork_flow.delay(1)
    durable.run_until_idle(advance_clock=False)  # to the hour's sleep
    assert result_of(backend, sleeping.id).state == states.STARTED
    cancel(sleeping.id, "no longer wanted")
    with pytest.raises(RunCancelled, match="no longer wanted"):
        result_of(backend, sleeping.id).get(timeout=5)

    skipped = Run.objects.create(
        id="skipped-1",
        task_name="t.add",
        status=RunStatus.SKIPPED,
        created_at=clock.now(),
        error=json.dumps({"type": "RunSkipped", "module": "celery_durable.exceptions", "message": "rate limit"}),
    )
    with pytest.raises(RunSkipped, match="rate limit"):
        result_of(backend, skipped.id).get(timeout=5)


def test_statuses__not_started_is_pending_started_and_suspended_is_started(backend):
    for status, state in [
        (RunStatus.PENDING, states.PENDING),
        (RunStatus.QUEUED, states.PENDING),
        (RunStatus.PAUSED, states.PENDING),
        (RunStatus.RUNNING, states.STARTED),
        (RunStatus.SLEEPING, states.STARTED),
        (RunStatus.WAITING, states.STARTED),
    ]:
        run = Run.objects.create(id=f"s-{status}", task_name="t.add", status=status, created_at=clock.now())
        assert result_of(backend, run.id).state == state, status


def test_stored_error_naming_a_non_exception__is_refused_as_celery_refuses_it(backend):
    """A run row whose error names ``os.system`` is not turned into a call of it."""
    Run.objects.create(
        id="evil-1",
        task_name="t.add",
        status=RunStatus.FAILED,
        created_at=clock.now(),
        error=json.dumps({"type": "system", "module": "os", "message": "rm -rf /", "traceback": ""}),
    )
    with pytest.raises(SecurityError):
        result_of(backend, "evil-1").get(timeout=5)


def test_batched_call__get_returns_its_batch_runs_value(durable, backend, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        calls = [batch_tasks.collect.delay(account="acme", n=n) for n in (1, 2)]
        forming = result_of(backend, calls[0].id)
        assert forming.state == states.PENDING and backend.is_run(calls[0].id)  # not a plain task's id
        calls.append(batch_tasks.collect.delay(account="acme", n=3))
    durable.run_until_idle()
    assert [result_of(backend, call.id).get(timeout=5) for call in calls] == [6, 6, 6]


def test_worker_storing_a_runs_outcome__writes_nothing_a_plain_tasks_goes_to_the_plain_backend(durable, backend):
    run = tasks.add.delay(1, 2)
    durable.run_until_idle()
    # What Celery's tracer does when the task returns (with its request) and what the
    # cancel path does (no request): neither writes anything for a run.
    backend.mark_as_done(run.id, 3, request=durable_request("t.add"))
    backend.mark_as_failure(run.id, RunCancelled("late"))
    backend.store_result(run.id, 3, states.SUCCESS)
    assert not TaskResult.objects.filter(task_id=run.id).exists()
    assert result_of(backend, run.id).get(timeout=5) == 3

    backend.mark_as_done("plain-1", 4, request=durable_request("t.plain"))
    assert TaskResult.objects.get(task_id="plain-1").status == states.SUCCESS
    assert result_of(backend, "plain-1").get(timeout=5) == 4
    backend.mark_as_failure("plain-2", ValueError("bad"), request=durable_request("t.plain"))
    with pytest.raises(ValueError, match="bad"):
        result_of(backend, "plain-2").get(timeout=5)


def test_reading_a_known_run__is_one_query(durable, backend, django_assert_num_queries):
    run = tasks.add.delay(1, 2)
    result = result_of(backend, run.id)
    with django_assert_num_queries(2):  # is it a run? then its row
        assert result.state == states.PENDING
    durable.run_until_idle()
    with django_assert_num_queries(1):
        assert result.get(timeout=5) == 3
    with django_assert_num_queries(0):  # a ready result is cached, as in Celery's backends
        assert result.get(timeout=5) == 3


def test_no_plain_backend__plain_task_ids_raise_celerys_no_backend_error(settings, durable):
    settings.CELERY_DURABLE = {**settings.CELERY_DURABLE, "PLAIN_RESULT_BACKEND": None}
    backend = DurableResultBackend(app=current_app)
    backend.mark_as_done("plain-3", 4, request=durable_request("t.plain"))  # stored nowhere, no error
    with pytest.raises(NotImplementedError, match="No result backend"):
        result_of(backend, "plain-3").get(timeout=1)
    run = tasks.add.delay(2, 2)
    durable.run_until_idle()
    assert result_of(backend, run.id).get(timeout=5) == 4


@pytest.mark.parametrize("value", [5, "", ["redis://"]])
def test_plain_result_backend_setting__must_be_a_url_or_none(settings, value):
    settings.CELERY_DURABLE = {**settings.CELERY_DURABLE, "PLAIN_RESULT_BACKEND": value}
    with pytest.raises(DurableConfigError, match="PLAIN_RESULT_BACKEND"):
        get_settings()


def test_get_with_a_timeout__raises_celerys_timeout_while_the_run_is_unfinished(durable, backend):
    from celery.exceptions import TimeoutError as CeleryTimeout

    run = tasks.add.delay(1, 1)
    durable.clock.advance(timedelta(seconds=1))
    with pytest.raises(CeleryTimeout):
        result_of(backend, run.id).get(timeout=0.05, interval=0.01)


def test_publishing_a_run__with_an_asynchronous_plain_backend_asks_the_database_nothing(
    settings, django_assert_num_queries
):
    """``publish()`` tells the backend the id is a run; Celery's ``on_task_call`` costs no query."""
    from tests.e2e.conftest import BROKERS, reachable

    if not reachable(BROKERS["redis"]):
        service_unavailable(f"Redis at {BROKERS['redis']} is unreachable")
    settings.CELERY_DURABLE = {**settings.CELERY_DURABLE, "PLAIN_RESULT_BACKEND": BROKERS["redis"]}
    backend = DurableResultBackend(app=current_app)
    assert backend.plain.is_async
    backend.remember_run("run-published")
    with django_assert_num_queries(0):
        backend.on_task_call(None, "run-published")
    with django_assert_num_queries(0):  # any other id is a plain task's (Redis subscribes to it)
        backend.on_task_call(None, "plain-published")
    backend.plain.result_consumer.cancel_for("plain-published")
