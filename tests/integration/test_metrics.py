"""Prometheus metrics (signal-fed counters, scrape-time gauges) and structured logs."""

import io
import json
import logging
from datetime import timedelta

import pytest
from django.test import RequestFactory
from django.utils import timezone

from celery_durable import NonRetriableError, durable_task, logs, metrics, step
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.conftest import require_module
from tests.integration.test_admin import make_runs
from tests.testapp import tasks

prometheus_client = require_module("prometheus_client")

user_log = logging.getLogger("tests.user_code")


@durable_task(name="t.logging")
def logging_task(x):
    user_log.info("outside any step")

    def charge():
        user_log.info("charging %s", x)
        return x

    return step.run("charge", charge)


@pytest.fixture
def registry():
    registry = prometheus_client.CollectorRegistry()
    metrics.enable(registry)
    yield registry
    metrics.disable(registry)


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_counters__follow_run_and_step_signals(durable, registry):
    metrics.enable(registry)  # idempotent
    tasks.add.delay(1, 2)
    tasks.add.delay(3, 4)
    durable.fail_step("t.three_steps", "two", NonRetriableError("no"))
    tasks.three_steps.delay(1)
    tasks.flaky.delay(1)
    durable.run_until_idle()
    assert value(registry, "celery_durable_runs_started_total", task="t.add") == 2
    assert value(registry, "celery_durable_runs_completed_total", task="t.add") == 2
    assert value(registry, "celery_durable_runs_failed_total", task="t.three_steps") == 1
    assert value(registry, "celery_durable_step_failures_total", task="t.three_steps", retried="false") == 1
    assert value(registry, "celery_durable_step_failures_total", task="t.flaky", retried="true") == 1
    assert value(registry, "celery_durable_runs_resumed_total", task="t.flaky") == 1
    assert value(registry, "celery_durable_step_duration_seconds_count", task="t.add") == 2


def test_counters__count_cancellations(durable, registry):
    from celery_durable.api import cancel

    run = tasks.add.delay(1, 2)
    cancel(run.id, reason="test")
    assert value(registry, "celery_durable_runs_cancelled_total", task="t.add") == 1


def test_disable__disconnects(durable):
    registry = prometheus_client.CollectorRegistry()
    metrics.enable(registry)
    metrics.disable(registry)
    tasks.add.delay(1, 2)
    durable.run_until_idle()
    assert registry.get_sample_value("celery_durable_runs_started_total", {"task": "t.add"}) is None


def test_collector__reports_backlog_lateness_and_expired_leases(db, django_assert_max_num_queries):
    registry = prometheus_client.CollectorRegistry()
    metrics.register_collector(registry)
    now = timezone.now()
    queued = make_runs(3, status=RunStatus.QUEUED, task="t.q", steps=0)
    Run.objects.filter(id=queued[0].id).update(created_at=now - timedelta(minutes=10))
    make_runs(1, status=RunStatus.SLEEPING, task="t.s", steps=0, wake_at=now - timedelta(seconds=30))
    make_runs(1, status=RunStatus.RUNNING, task="t.r", steps=0, lease_expires_at=now - timedelta(seconds=5))
    make_runs(5, status=RunStatus.COMPLETED, task="t.q", steps=0)
    with django_assert_max_num_queries(3):
        text = prometheus_client.generate_latest(registry).decode()
    assert 'celery_durable_runs{status="queued",task="t.q"} 3.0' in text
    assert "completed" not in text
    assert 598 <= value(registry, "celery_durable_backlog_oldest_age_seconds", task="t.q") <= 700
    assert 29 <= value(registry, "celery_durable_waker_lateness_seconds") <= 120
    assert value(registry, "celery_durable_expired_leases") == 1
    assert value(registry, "celery_durable_collector_up") == 1


def test_metrics_view__serves_the_text_format(db):
    response = metrics.metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")


# --- structured logs ---------------------------------------------------------------------------


@pytest.fixture
def json_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RunContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    loggers = [user_log, logging.getLogger(logs.EVENTS_LOGGER)]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    for logger in loggers:
        logger.removeHandler(handler)


def test_log_records__carry_run_and_step_ids(durable, json_lines):
    run = logging_task.delay(5)
    durable.run_until_idle()
    records = {r["message"]: r for r in json_lines()}
    inside = records["charging 5"]
    assert inside["run_id"] == run.id and inside["step_id"] == "charge" and inside["task_name"] == "t.logging"
    assert inside["attempt"] == 1
    outside = records["outside any step"]
    assert outside["run_id"] == run.id and "step_id" not in outside
    user_log.info("not in a run")
    assert "run_id" not in {r["message"]: r for r in json_lines()}["not in a run"]


def test_log_signals__logs_lifecycle_events_with_ids(durable, json_lines):
    logs.log_signals()
    logs.log_signals()  # idempotent
    durable.fail_step("t.three_steps", "two", NonRetriableError("card declined"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    events = [r for r in json_lines() if r["logger"] == logs.EVENTS_LOGGER]
    assert [e["event"] for e in events].count("run_started") == 1
    failed = next(e for e in events if e["event"] == "run_failed")
    assert failed["run_id"] == run.id and failed["step_id"] == "two" and failed["level"] == "ERROR"
    assert failed["error_type"] == "NonRetriableError" and "card declined" in failed["message"]
    step_done = next(e for e in events if e["event"] == "step_completed")
    assert step_done["step_id"] == "one" and step_done["duration"] >= 0
    logs.stop_logging_signals()
    tasks.add.delay(1, 2)
    durable.run_until_idle()
    assert len([r for r in json_lines() if r["logger"] == logs.EVENTS_LOGGER]) == len(events)
