"""Issue 13, findings 3 and 4, with a real worker: deep values are read back, cycles fail the run."""

import pytest

from celery_durable import SerializationError, get_run
from celery_durable.serialization import MAX_DEPTH
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import tasks

pytestmark = pytest.mark.e2e


def test_deep_arguments_cross_the_broker_and_a_cyclic_step_output_fails_the_run(e2e_env, workers):
    workers("safety")
    value = "leaf"
    for _ in range(MAX_DEPTH):
        value = [value]
    deep = tasks.identity.apply_async((value,), queue=e2e_env["queue"])
    assert deep.get(timeout=60) == value  # it used to stay queued, republished for ever
    with pytest.raises(SerializationError):
        tasks.identity.apply_async(([value],), queue=e2e_env["queue"])

    cyclic = tasks.cyclic_output.apply_async(queue=e2e_env["queue"])
    # It used to spin in the worker, the run "running" for ever under a live heartbeat.
    record = wait_for(lambda: (run := get_run(cyclic.id)).status == RunStatus.FAILED and run, 60, "the run to fail")
    assert record.error_value["type"] == "SerializationError"
    assert "contains itself" in record.error_value["message"]
