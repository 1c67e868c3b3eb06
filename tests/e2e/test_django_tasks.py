"""Django's task API (``django.tasks``) through real workers on Redis and RabbitMQ (Django >= 6.0)."""

import contextlib
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import django
import pytest
from django.utils import timezone

from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.e2e.processes import spawn  # noqa: F401  (fixture)
from tests.testapp.models import BodyRun

if django.VERSION >= (6, 0):
    from django.tasks import TaskResultStatus

    from tests.testapp import django_tasks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks needs Django >= 6.0"),
]


def finished(result):
    def done():
        result.refresh()
        return result.is_finished

    return done


def body_counts(run_id):
    counts = {}
    for name in BodyRun.objects.filter(run_id=run_id).values_list("step", flat=True):
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_enqueue_to_result_errors_async_and_run_after(e2e_env, workers):
    workers("django-tasks")
    queue = e2e_env["queue"]
    added = django_tasks.add.using(queue_name=queue).enqueue(20, 22)
    failing = django_tasks.fails.using(queue_name=queue).enqueue("no luck")
    awaited = django_tasks.async_add.using(queue_name=queue).enqueue(1, 2)
    later = django_tasks.add.using(queue_name=queue, run_after=timezone.now() + timedelta(seconds=2)).enqueue(1, 1)
    assert later.status == TaskResultStatus.READY
    for result in (added, failing, awaited, later):
        wait_for(finished(result), 60, f"{result.task.name} to finish")
    assert added.status == TaskResultStatus.SUCCESSFUL and added.return_value == 42
    assert awaited.return_value == 3
    assert failing.status == TaskResultStatus.FAILED
    [error] = failing.errors
    assert error.exception_class_path == "builtins.ValueError" and "ValueError: no luck" in error.traceback
    assert later.return_value == 2
    run = Run.objects.get(id=later.id)
    assert run.started_at >= run.created_at + timedelta(seconds=2)
    assert added.attempts == 1


def test_worker_killed_mid_task__resumed_without_rerunning_completed_steps(e2e_env, workers):
    first = workers("dt-first")
    result = django_tasks.chain.using(queue_name=e2e_env["queue"]).enqueue(3600.0)
    wait_for(lambda: body_counts(result.id).get("two") == 1, 30, "step two to start")
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    assert result.worker_ids == [Run.objects.get(id=result.id).lease_owner]  # the worker running it
    first.kill()  # SIGKILL the whole worker mid-step: no cleanup, message unacked
    BodyRun.objects.create(run_id=result.id, step="release")
    workers("dt-second")
    wait_for(finished(result), 60, "the run to finish on the second worker")
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == "done"
    counts = body_counts(result.id)
    assert (counts["one"], counts["two"], counts["three"]) == (1, 2, 1)  # step one never ran again
    run = Run.objects.get(id=result.id)
    assert run.status == RunStatus.COMPLETED and run.recoveries >= 1
    assert result.attempts == run.recoveries + 1


def test_example_project_django_task_on_a_real_worker(tmp_path, spawn):  # noqa: F811
    """example_project's ``shop.django_tasks.send_receipt``: enqueued with Django's API, run by its worker."""
    project = Path(__file__).resolve().parents[2] / "example_project"
    env = {**os.environ, "EXAMPLE_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    for name in ("EXAMPLE_DATABASE_URL", "EXAMPLE_BROKER_URL"):
        env.pop(name, None)

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "-v0")
    command = [sys.executable, "-m", "celery", "-A", "example_project", "worker", "-P", "solo", "-l", "info"]
    worker = spawn(command, project, env, tmp_path / "worker.log")
    wait_for(lambda: " ready." in worker.output() or worker.process.poll() is not None, 60, "the worker")
    assert worker.process.poll() is None, worker.output()
    script = (
        "from shop.models import Order, Product; from shop.django_tasks import send_receipt; "
        "p = Product.objects.create(sku='m1', name='Mug', price=5, stock=3); "
        "o = Order.objects.create(email='a@example.com', product=p, quantity=2); "
        "print('RESULT', send_receipt.enqueue(order_id=o.id).id)"
    )
    run_id = manage("shell", "-c", script).split("RESULT ")[1].split()[0]

    def status():
        with contextlib.closing(sqlite3.connect(tmp_path / "var" / "db.sqlite3")) as db:
            return db.execute("SELECT task_name, status FROM celery_durable_run WHERE id = ?", (run_id,)).fetchone()

    wait_for(lambda: status()[1] in ("completed", "failed"), 90, "the receipt run to finish")
    assert status() == ("shop.django_tasks.send_receipt", "completed"), worker.output()
    check = f"from shop.django_tasks import send_receipt; r = send_receipt.get_result({run_id!r}); print(r.status)"
    assert manage("shell", "-c", check).strip().endswith("SUCCESSFUL")
    assert "Mug" in "".join(path.read_text() for path in (tmp_path / "var" / "mail").iterdir())


def test_flow_options_of_a_django_task_on_real_workers(e2e_env, workers):
    """``@durable_options(concurrency=...)`` under ``@task``: a user's second run waits for the first."""
    workers("dt-flow", concurrency=2)
    held = django_tasks.held_per_user.using(queue_name=e2e_env["queue"])
    first = held.enqueue(7, 3600.0)
    wait_for(lambda: body_counts(first.id).get("held") == 1, 30, "the first run to hold its slot")
    second = held.enqueue(7, 3600.0)
    other_user = held.enqueue(8, 0.0)
    wait_for(finished(other_user), 60, "another user's run, not held back")
    assert Run.objects.get(id=second.id).status == RunStatus.PENDING
    second.refresh()
    assert second.status == TaskResultStatus.READY
    BodyRun.objects.create(run_id="release-7", step="release")
    for result in (first, second):
        wait_for(finished(result), 60, "user 7's runs")
        assert result.return_value == 7
    runs = {run.id: run for run in Run.objects.filter(id__in=[first.id, second.id])}
    assert runs[second.id].started_at >= runs[first.id].finished_at
