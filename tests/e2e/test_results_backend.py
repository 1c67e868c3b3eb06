"""``DurableResultBackend`` in a real worker: runs' results read from their rows, stored once."""

import pytest
from celery import chain, current_app
from celery.result import AsyncResult
from django_celery_results.models import TaskResult

from celery_durable import NonRetriableError
from celery_durable.models import Run
from celery_durable.results import DurableResultBackend
from tests.testapp import tasks

pytestmark = pytest.mark.e2e


def test_durable_result_backend__runs_answer_from_their_rows_plain_tasks_from_django_db(e2e_env, workers, settings):
    e2e_env["env"].update(
        DURABLE_TEST_RESULT_BACKEND="celery_durable.results.DurableResultBackend",
        DURABLE_TEST_PLAIN_RESULT_BACKEND="django-db",
    )
    worker = workers("rows")
    settings.CELERY_DURABLE = {**settings.CELERY_DURABLE, "PLAIN_RESULT_BACKEND": "django-db"}
    backend = DurableResultBackend(app=current_app)
    queue = e2e_env["queue"]

    run = tasks.three_steps.apply_async((1,), queue=queue)
    failing = tasks.non_retriable.apply_async(queue=queue)
    plain = tasks.plain.apply_async((21,), queue=queue)
    flow = chain(tasks.add.s(1, 2), tasks.plain.s(), tasks.add.s(10)).apply_async(queue=queue)

    assert AsyncResult(run.id, backend=backend).get(timeout=60) == 7
    with pytest.raises(NonRetriableError, match="card declined"):
        AsyncResult(failing.id, backend=backend).get(timeout=60)
    assert AsyncResult(plain.id, backend=backend).get(timeout=60) == 42
    assert AsyncResult(flow.id, backend=backend).get(timeout=60) == 16  # (1 + 2) * 2 + 10

    durable_ids = list(Run.objects.filter(durable=True).values_list("id", flat=True))
    assert run.id in durable_ids and failing.id in durable_ids and flow.id in durable_ids
    assert not TaskResult.objects.filter(task_id__in=durable_ids).exists()  # stored once: in the run row
    assert TaskResult.objects.get(task_id=plain.id).status == "SUCCESS"
    assert "results:     durable (run rows) + django-db" in worker.log.read_text()  # the banner names both
