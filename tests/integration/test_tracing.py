"""OpenTelemetry spans per run execution and step (the optional tracing module)."""

import pytest

from celery_durable import NonRetriableError, tracing
from tests.conftest import require_module
from tests.testapp import tasks

sdk_trace = require_module("opentelemetry.sdk.trace")
in_memory = require_module("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = require_module("opentelemetry.sdk.trace.export")


@pytest.fixture
def spans():
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()


def test_spans__one_per_execution_and_per_executed_step(durable, spans):
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name == "durable run t.three_steps"]
    steps = [s for s in finished if s.name.startswith("durable step")]
    assert len(runs) == 1
    assert runs[0].attributes["durable.run_id"] == run.id
    assert runs[0].attributes["durable.outcome"] == "completed"
    assert runs[0].status.is_ok
    assert [s.name for s in steps] == ["durable step one", "durable step two", "durable step three"]
    assert {s.parent.span_id for s in steps} == {runs[0].context.span_id}


def test_spans__failed_step_and_run_have_error_status(durable, spans):
    durable.fail_step("t.three_steps", "two", NonRetriableError("card declined"))
    tasks.three_steps.delay(1)
    durable.run_until_idle()
    finished = {s.name: s for s in spans.get_finished_spans()}
    run = finished["durable run t.three_steps"]
    step = finished["durable step two"]
    assert not run.status.is_ok and "card declined" in run.status.description
    assert run.attributes["durable.outcome"] == "failed"
    assert not step.status.is_ok
    assert step.events[0].attributes["exception.type"] == "NonRetriableError"


def test_spans__a_retried_run_gets_one_span_per_execution(durable, spans):
    tasks.flaky.delay(1)
    durable.run_until_idle()
    runs = [s for s in spans.get_finished_spans() if s.name == "durable run t.flaky"]
    assert [r.attributes["durable.execution"] for r in runs] == [1, 2]
    assert [r.attributes["durable.outcome"] for r in runs] == ["superseded", "completed"]


def test_enable__is_idempotent_and_disable_stops(durable, spans):
    tracing.enable()
    tracing.disable()
    tasks.add.delay(1, 2)
    durable.run_until_idle()
    assert spans.get_finished_spans() == ()
