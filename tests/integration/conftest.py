import pytest
from celery import current_app, signals
from celery.exceptions import Ignore
from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_durable import durable_task
from celery_durable.integration import publish as publish_module
from celery_durable.models import Run
from tests.integration.scheduling import START


def execute(run_id, queries=None):
    """Execute one delivery of ``run_id`` the way a worker does; return the value or the raised error.

    With ``queries`` (a list), the SQL of the delivery itself is appended to it.
    """
    run = Run.objects.get(id=run_id)
    task = current_app.tasks[run.task_name]
    task.push_request(id=run_id, called_directly=False, is_eager=False)
    try:
        with CaptureQueriesContext(connection) as captured:
            try:
                return task(*run.args_value, **run.kwargs_value)
            finally:
                if queries is not None:
                    queries.extend(q["sql"] for q in captured.captured_queries)
    except Ignore as ignored:
        return ignored
    except Exception as exc:
        return exc
    finally:
        task.pop_request()


@pytest.fixture
def deliver():
    return execute


@pytest.fixture
def declare(durable):
    """Declare a scheduled durable task for one test (removed from the app afterwards)."""
    durable.clock.current = START
    names = []

    def declare_task(name, schedule, **options):
        full = f"tests.scheduled.{name}"

        @durable_task(name=full, schedule=schedule, **options)
        def body(*args, **kwargs):
            return {"args": list(args), "kwargs": kwargs}

        names.append(full)
        return current_app.tasks[full]

    yield declare_task
    for name in names:
        current_app.tasks.pop(name, None)


class Published:
    """Messages that reached the broker (``before_task_publish``): ``(task id, headers)``."""

    def __init__(self):
        self.messages = []

    def __call__(self, sender=None, headers=None, **kwargs):
        self.messages.append((headers["id"], headers))

    def __enter__(self):
        publish_module.dispatch_override = None  # publish for real, to the test app's broker
        signals.before_task_publish.connect(self, weak=False)
        return self

    def __exit__(self, *exc):
        signals.before_task_publish.disconnect(self)

    def ids(self):
        return [task_id for task_id, _headers in self.messages]


@pytest.fixture
def real_publish(durable):
    with Published() as published:
        yield published
    publish_module.dispatch_override = durable.published.append
