"""Django's task API (``django.tasks``) on ``celery_durable.tasks.DurableBackend``, driven in-process.

The calls are the ones Django's documentation shows: ``task.enqueue()``, ``task.using()``,
``result.refresh()``, ``task.get_result()``, ``default_task_backend``.
"""

from datetime import timedelta

import django
import pytest
from asgiref.sync import async_to_sync

from celery_durable import Concurrency, DurableConfigError, serialization
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.testapp.models import BodyRun

if django.VERSION >= (6, 0):
    from django.core import checks
    from django.tasks import TaskResultStatus, default_task_backend, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started

    from celery_durable.tasks import DurableBackend, durable_options
    from tests.testapp import django_tasks

pytestmark = [
    pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks needs Django >= 6.0"),
    pytest.mark.django_db(transaction=True),
]


def steps_ran(run_id):
    return sorted(BodyRun.objects.filter(run_id=run_id).values_list("step", flat=True))


def test_enqueue_then_result(durable):
    seen = []

    def receiver(signal, sender, task_result, **kwargs):
        seen.append((signal, task_result.id, task_result.status))

    for signal in (task_enqueued, task_started, task_finished):
        signal.connect(receiver)
    try:
        result = django_tasks.add.enqueue(2, 3)
        durable.run_until_idle()
    finally:
        for signal in (task_enqueued, task_started, task_finished):
            signal.disconnect(receiver)
    assert seen == [
        (task_enqueued, result.id, TaskResultStatus.READY),
        (task_started, result.id, TaskResultStatus.RUNNING),
        (task_finished, result.id, TaskResultStatus.SUCCESSFUL),
    ]


def test_enqueue_then_refresh(durable):
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
    assert error.traceback.startswith("Traceback") and "ValueError: boom" in error.traceback
    assert "raise ValueError(message)" in error.traceback
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


def test_django_priority_zero_keeps_the_declared_priority():
    assert Run.objects.get(id=django_tasks.declared_priority.enqueue(1).id).priority == 120
    assert Run.objects.get(id=django_tasks.declared_priority.using(priority=10).enqueue(2).id).priority == 60


def test_django_priority_sets_the_broker_level_of_the_run(durable):
    from celery import current_app

    previous = current_app.conf.broker_url
    current_app.conf.broker_url = "redis://127.0.0.1:6379/7"  # no message leaves: the fixture records them
    try:
        result = django_tasks.urgent.enqueue(1)
        plain = django_tasks.add.enqueue(1, 2)
    finally:
        current_app.conf.broker_url = previous
    assert serialization.loads(Run.objects.get(id=result.id).options)["priority"] == 2  # Redis: 0 is first
    assert "priority" not in serialization.loads(Run.objects.get(id=plain.id).options)


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


def test_runs_show_in_admin_dashboard_command_and_metrics(durable, admin_client):
    import io
    import json

    from django.core.management import call_command
    from django.urls import reverse

    from celery_durable import metrics

    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    metrics.enable(registry)
    try:
        done = django_tasks.add.enqueue(1, 2)
        failed = django_tasks.fails.enqueue("no")
        durable.run_until_idle()
        path = "tests.testapp.django_tasks.add"
        assert registry.get_sample_value("celery_durable_runs_completed_total", {"task": path}) == 1
        labels = {"task": "tests.testapp.django_tasks.fails"}
        assert registry.get_sample_value("celery_durable_runs_failed_total", labels) == 1
    finally:
        metrics.disable(registry)
    out = io.StringIO()
    call_command("durable_runs", "list", "--json", "--task", path, stdout=out)
    assert [item["id"] for item in json.loads(out.getvalue())] == [done.id]
    body = admin_client.get(reverse("admin:celery_durable_run_changelist"), {"task": path}).content.decode()
    assert done.id in body and failed.id not in body
    detail = admin_client.get(reverse("admin:celery_durable_run_change", args=[failed.id])).content.decode()
    assert "ValueError" in detail
    dashboard = admin_client.get(reverse("admin:celery_durable_run_dashboard")).content.decode()
    assert "tests.testapp.django_tasks.fails" in dashboard


def test_backend_checks_report_bad_options():
    def ids(options):
        return [(m.id, m.msg) for m in DurableBackend(alias="x", params={"OPTIONS": options}).check()]

    assert ids({}) == []
    assert ids({"TASK_OPTIONS": {"tests.testapp.django_tasks.add": {"retries": 2}}}) == []
    [(code, msg)] = ids({"TASK_OPTIONS": {"tests.testapp.django_tasks.nope": {"retries": 2}}})
    assert code == "celery_durable.E022" and "tests.testapp.django_tasks.nope" in msg
    [(code, msg)] = ids({"TASK_OPTIONS": {"tests.testapp.django_tasks.add": {"concurrency": 5}}})
    assert code == "celery_durable.E021" and "concurrency" in msg
    add = "tests.testapp.django_tasks.add"
    [(code, msg)] = ids({"TASK_OPTIONS": {add: {"concurrency": Concurrency(key="z", limit=1)}}})
    assert code == "celery_durable.E021" and "'z' names no parameter" in msg
    [(code, msg)] = ids({"TASK_OPTIONS": {"tests.testapp.django_tasks.add": {"bogus": 1}}})
    assert code == "celery_durable.E021" and "bogus" in msg
    [(code, msg)] = ids({"TASK_OPTIONS": ["tests.testapp.django_tasks.add"]})
    assert code == "celery_durable.E021"
    [(code, msg)] = ids({"CONCURRENCY": 3})
    assert code == "celery_durable.E021" and "CONCURRENCY" in msg


def test_durable_options_refuses_bad_declarations():
    with pytest.raises(DurableConfigError, match="unknown option"):
        durable_options(bind=True)
    with pytest.raises(DurableConfigError, match="'user' names no parameter"):

        @durable_options(concurrency=Concurrency(key="user", limit=1))
        def f(user_id): ...

    with pytest.raises(DurableConfigError, match="below @task"):
        durable_options(retries=1)(django_tasks.add)


def test_durable_options_key_skips_the_context_parameter():
    @durable_options(concurrency=Concurrency(key="user_id", limit=1))
    def g(context, user_id): ...

    with pytest.raises(DurableConfigError, match="'context' names no parameter"):

        @durable_options(concurrency=Concurrency(key="context", limit=1))
        def h(context, user_id): ...


def test_events_and_child_runs_inside_a_django_task(durable):
    result = django_tasks.confirmed_fan_out.enqueue(7)
    durable.run_until_idle(advance_clock=False)
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    assert Run.objects.get(id=result.id).waiting_for == "user.confirmed"
    durable.send_event("user.confirmed", {"user_id": 7})
    durable.run_until_idle()
    result.refresh()
    assert result.return_value == {"event": {"user_id": 7}, "sums": [0, 2, 4]}
    children = Run.objects.filter(parent_id=result.id).order_by("child_index")
    assert [(c.task_name, c.status) for c in children] == [("tests.testapp.django_tasks.add", "completed")] * 3
    assert [child.status for child in map(default_task_backend.get_result, [c.id for c in children])] == [
        TaskResultStatus.SUCCESSFUL
    ] * 3


def test_cancelled_run_is_failed_with_run_cancelled(durable):
    from celery_durable import cancel

    result = django_tasks.naps.enqueue(600)
    durable.run_until_idle(advance_clock=False)  # asleep
    cancel(result.id, reason="not needed")
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "celery_durable.exceptions.RunCancelled"
    durable.run_until_idle()
    assert steps_ran(result.id) == ["before"]
