"""Django's task API (``django.tasks``) on ``celery_durable.tasks.DurableBackend``, driven in-process.

The calls are the ones Django's documentation shows: ``task.enqueue()``, ``task.using()``,
``result.refresh()``, ``task.get_result()``, ``default_task_backend``.
"""

from datetime import timedelta

import django
import pytest
from asgiref.sync import async_to_sync

from celery_durable import serialization
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.testapp.models import BodyRun

if django.VERSION >= (6, 0):
    from django.core import checks
    from django.tasks import TaskResultStatus, default_task_backend, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist

    from tests.testapp import django_tasks

pytestmark = [
    pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks needs Django >= 6.0"),
    pytest.mark.django_db(transaction=True),
]


def steps_ran(run_id):
    return sorted(BodyRun.objects.filter(run_id=run_id).values_list("step", flat=True))


def test_enqueue_then_result(durable):
    result = django_tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.task.module_path == "tests.testapp.django_tasks.add"
    run = Run.objects.get(id=result.id)
    assert (run.task_name, run.status, run.args_value) == ("tests.testapp.django_tasks.add", RunStatus.QUEUED, [2, 3])
    durable.run_until_idle()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.is_finished and result.errors == [] and result.attempts == 1
    assert result.started_at is not None and result.finished_at is not None
    fetched = django_tasks.add.get_result(result.id)
    assert fetched.return_value == 5 and fetched.args == [2, 3]
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    assert durable.history(result.id) == [("add", "completed", 1)]


def test_backend_flags_and_system_checks():
    backend = task_backends["default"]
    assert (backend.supports_defer, backend.supports_async_task, backend.supports_get_result) == (True, True, True)
    assert backend.supports_priority is True
    errors = [m for m in checks.run_checks() if m.id and m.id.startswith(("celery_durable", "tasks"))]
    assert errors == []


def test_errors_surface_in_task_result(durable):
    result = django_tasks.fails.enqueue("boom")
    durable.run_until_idle()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "ValueError: boom" in error.traceback and "def fails" not in error.traceback
    assert 'raise ValueError(message)' in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert steps_ran(result.id) == ["before"]


def test_unknown_result_id():
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("no-such-run")


def test_run_after_is_the_durable_start_time(durable):
    when = durable.clock.now() + timedelta(hours=2)
    result = django_tasks.add.using(run_after=when).enqueue(1, 1)
    run = Run.objects.get(id=result.id)
    assert run.wake_at == when and run.status == RunStatus.QUEUED
    durable.run_until_idle(advance_clock=False)
    result.refresh()
    assert result.status == TaskResultStatus.READY  # not before its time
    durable.run_until_idle()
    result.refresh()
    assert result.return_value == 2
    assert Run.objects.get(id=result.id).started_at >= when


def test_takes_context(durable):
    result = django_tasks.with_context.enqueue("x")
    durable.run_until_idle()
    result.refresh()
    assert result.return_value == {"id": result.id, "attempt": 1, "label": "x"}


def test_async_task_with_a_step(durable):
    result = django_tasks.async_add.enqueue(4, 5)
    durable.run_until_idle()
    result.refresh()
    assert result.return_value == 9
    assert durable.history(result.id) == [("first", "completed", 1)]


def test_aenqueue_and_aget_result(durable):
    result = async_to_sync(django_tasks.add.aenqueue)(7, 8)
    durable.run_until_idle()
    fetched = async_to_sync(default_task_backend.aget_result)(result.id)
    assert fetched.return_value == 15


def test_sleep_step_is_running_then_successful(durable):
    result = django_tasks.naps.enqueue(600)
    durable.run_until_idle(advance_clock=False)
    result.refresh()
    assert Run.objects.get(id=result.id).status == RunStatus.SLEEPING
    assert result.status == TaskResultStatus.RUNNING
    durable.run_until_idle()
    result.refresh()
    assert result.return_value == "rested"
    assert steps_ran(result.id) == ["after", "before"]  # "before" not run again after the sleep


def test_priority_maps_onto_head_start_seconds():
    result = django_tasks.urgent.enqueue(1)
    assert Run.objects.get(id=result.id).priority == 300  # Django's 50 x 6
    lowered = django_tasks.urgent.using(priority=-100).enqueue(2)
    assert Run.objects.get(id=lowered.id).priority == -600
    assert Run.objects.get(id=django_tasks.add.enqueue(1, 2).id).priority == 0


def test_priority_out_of_range_is_refused_by_django():
    with pytest.raises(InvalidTask):
        django_tasks.add.using(priority=101)


def test_queue_name_is_the_celery_queue():
    result = django_tasks.add.using(queue_name="reports").enqueue(1, 2)
    assert serialization.loads(Run.objects.get(id=result.id).options)["queue"] == "reports"
    default = django_tasks.add.enqueue(1, 2)
    assert "queue" not in serialization.loads(Run.objects.get(id=default.id).options)


def test_concurrency_from_durable_options(durable):
    first = django_tasks.one_per_user.enqueue(7)
    second = django_tasks.one_per_user.enqueue(7)
    other = django_tasks.one_per_user.enqueue(8)
    statuses = dict(Run.objects.values_list("id", "status"))
    assert (statuses[first.id], statuses[second.id], statuses[other.id]) == ("queued", "pending", "queued")
    assert second.status == TaskResultStatus.READY
    durable.run_until_idle()
    for result in (first, second, other):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL


def test_idempotency_from_backend_options(durable):
    first = django_tasks.configured.enqueue(order_id=41)
    again = django_tasks.configured.enqueue(order_id=41)
    assert again.id == first.id
    assert Run.objects.filter(task_name="tests.testapp.django_tasks.configured").count() == 1
    assert Run.objects.get(id=first.id).finish_by is not None  # Timeouts(finish=...) from TASK_OPTIONS
    durable.run_until_idle()
    again.refresh()
    assert again.return_value == 41
