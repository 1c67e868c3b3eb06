"""Broker priority: the router ``install(app)`` puts in front of ``task_routes``, and its checks."""

import pytest
from celery import current_app
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import checks
from celery_durable.integration.routing import DurablePriorityRouter, broker_level, install_router
from tests.testapp import flows, tasks
from tests.testapp.priority_tasks import prioritized

REDIS = "redis://127.0.0.1:6379/7"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def broker_url():
    """Point the app at another broker URL for routing decisions (no connection is made)."""
    previous = current_app.conf.broker_url

    def use(url):
        current_app.conf.broker_url = url

    yield use
    current_app.conf.broker_url = previous


def route(task, args=(), kwargs=None, **options):
    """What Celery's own router decides for a publication of ``task``."""
    return current_app.amqp.router.route(options, task.name, args, kwargs or {}, task)


@given(st.integers(-600, 600), st.integers(-600, 600))
def test_levels__keep_the_order_of_priorities_on_each_broker(low, high):
    low, high = sorted((low, high))
    assert 0 <= broker_level(low, "amqp", 10) <= broker_level(high, "amqp", 10) <= 10  # higher first
    assert 9 >= broker_level(low, "redis", None) >= broker_level(high, "redis", None) >= 0  # 0 first


def test_levels__span_the_whole_range():
    assert [broker_level(p, "amqp", 10) for p in (-600, 0, 600)] == [0, 5, 10]
    assert [broker_level(p, "redis", None) for p in (-600, 0, 600)] == [9, 5, 0]
    assert broker_level(600, "amqp", None) is None  # a queue without x-max-priority ignores it
    assert broker_level(600, "filesystem", None) is None


def test_router__is_installed_in_front_of_task_routes():
    routes = current_app.conf.task_routes
    assert isinstance(routes[0], DurablePriorityRouter)
    install_router(current_app)  # a second install changes nothing
    assert current_app.conf.task_routes is routes


def test_durable_run__gets_the_level_of_its_priority(broker_url):
    broker_url(REDIS)
    assert route(prioritized, ("b", 1, 600))["priority"] == 0
    assert route(prioritized, ("b", 1, -600))["priority"] == 9
    assert route(tasks.add, (1, 2))["priority"] == 5  # a durable task without priority=: the middle
    broker_url(AMQP)
    assert route(prioritized, ("b", 1), {"priority": 600})["priority"] == 10
    assert route(flows.limited_work, ("k", 1, True))["priority"] == 10


def test_plain_tasks_and_explicit_priorities__are_left_alone(broker_url):
    broker_url(REDIS)
    assert "priority" not in route(tasks.plain, (2,))
    assert route(prioritized, ("b", 1, 600), priority=7)["priority"] == 7


def test_task_default_priority__applies_to_plain_tasks_only(broker_url):
    broker_url(REDIS)
    current_app.conf.task_default_priority = 3
    try:
        prioritized._exec_options = None
        assert route(prioritized, ("b", 1, 600), **prioritized._get_exec_options())["priority"] == 0
    finally:
        current_app.conf.task_default_priority = None


def test_project_routes__still_decide_the_destination(broker_url):
    broker_url(REDIS)
    router = DurablePriorityRouter(current_app, {"f.prioritized": {"queue": "videos"}, "t.*": "other"})
    assert router("f.prioritized", ("b", 1, 600), {}, {}, task=prioritized) == {"queue": "videos", "priority": 0}
    assert router("t.add", (1, 2), {}, {}, task=tasks.add) == {"queue": "other", "priority": 5}
    assert router("t.plain", (2,), {}, {}, task=tasks.plain) == {"queue": "other"}
    assert router("elsewhere.task", (), {}, {}) is None


def test_checks__priority_needs_max_priority_prefetch_one_and_the_router(broker_url):
    broker_url(AMQP)
    assert checks.check_celery() == []  # the test settings: max priority 10, prefetch 1
    conf = current_app.conf
    routes, conf.task_queue_max_priority, conf.worker_prefetch_multiplier = conf.task_routes, None, 4
    conf.task_routes = {"f.*": {"queue": "flows"}}
    try:
        ids = [m.id for m in checks.check_celery()]
    finally:
        conf.task_routes, conf.task_queue_max_priority, conf.worker_prefetch_multiplier = routes, 10, 1
    assert ids == ["celery_durable.W007", "celery_durable.W008", "celery_durable.W009"]
    broker_url(REDIS)
    conf.task_queue_max_priority = None
    try:
        assert checks.check_celery() == []  # Redis needs no x-max-priority
    finally:
        conf.task_queue_max_priority = 10


def test_resumed_runs__go_ahead_of_first_executions_of_their_priority(broker_url):
    """Issue 14: a run that executed before (its sleep, wait, children or retry came due) is fetched first."""
    resumed = {"headers": {"durable_resume": True}}
    broker_url(REDIS)
    assert route(tasks.add, (1, 2))["priority"] == 5
    assert route(tasks.add, (1, 2), **resumed)["priority"] == 0  # Redis: 0 first
    assert route(prioritized, ("b", 1, -600), **resumed)["priority"] == 5  # a head start, not a jump over all
    broker_url(AMQP)
    assert route(tasks.add, (1, 2))["priority"] == 5
    assert route(tasks.add, (1, 2), **resumed)["priority"] == 10  # RabbitMQ: higher first
    assert route(tasks.add, (1, 2), priority=3, **resumed)["priority"] == 3  # explicit priorities win


def test_messages_of_runs_that_executed_before__are_resumes(durable, django_capture_on_commit_callbacks):
    from celery_durable import send_event

    first = flows.confirm.delay(21)
    durable.run_until_idle(advance_clock=False)
    durable.published.clear()
    with django_capture_on_commit_callbacks(execute=True):
        send_event("user.confirmed", {"user_id": 21})
    assert [(m.run_id, m.resume) for m in durable.published] == [(first.id, True)]
