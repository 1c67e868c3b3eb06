"""Crash safety with real workers on Redis and RabbitMQ (SPEC §10)."""

import os

import pytest
from celery.app.task import Task

from celery_durable import get_run
from celery_durable.integration.publish import NUDGE_HEADER
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e


def body_counts(run_id):
    counts = {}
    for name in BodyRun.objects.filter(run_id=run_id).values_list("step", flat=True):
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_worker_killed_mid_step__another_worker_finishes(e2e_env, workers):
    first = workers("first")
    result = tasks.slow_step_chain.apply_async((3600.0,), queue=e2e_env["queue"])
    # Step "one" is checkpointed and step "two" is running in the first worker...
    wait_for(lambda: body_counts(result.id).get("two") == 1, 30, "step two to start")
    assert get_run(result.id).status == RunStatus.RUNNING
    first.kill()  # ...when the whole worker dies (SIGKILL, no cleanup, message unacked).
    BodyRun.objects.create(run_id=result.id, step="release")  # later executions of "two" finish fast
    workers("second")
    assert result.get(timeout=60) == "done"
    counts = body_counts(result.id)
    assert counts["one"] == 1  # completed steps never ran again
    assert counts["two"] == 2  # the interrupted step ran again: at-least-once
    assert counts["three"] == 1
    record = get_run(result.id)
    assert record.status == RunStatus.COMPLETED
    assert record.recoveries >= 1
    assert list(record.steps.order_by("id").values_list("step_id", flat=True)) == ["one", "two", "three"]


def test_pool_process_killed__run_resumes_on_the_same_worker(e2e_env, workers):
    workers("solo-host")
    marker = e2e_env["dir"] / "crashed"
    result = tasks.crash_once.apply_async((str(marker),), queue=e2e_env["queue"])
    assert result.get(timeout=60) == 3
    assert marker.exists()  # the pool process really was killed once
    assert body_counts(result.id) == {"one": 1, "two": 2, "three": 1}


def test_duplicate_message__does_not_run_a_step_twice(e2e_env, workers):
    result = tasks.three_steps.apply_async((1,), queue=e2e_env["queue"])
    run = Run.objects.get(id=result.id)
    # The broker delivers the run's message twice more (redelivery, double publish).
    for _ in range(2):
        Task.apply_async(
            tasks.three_steps, args=(1,), task_id=result.id, queue=e2e_env["queue"], headers={NUDGE_HEADER: True}
        )
    workers("dups")
    assert result.get(timeout=60) == 7
    wait_for(lambda: not _queue_has_messages(e2e_env["queue"]), 30, "the duplicates to be consumed")
    assert body_counts(run.id) == {"one": 1, "two": 1, "three": 1}
    assert get_run(run.id).executions == 1


def _queue_has_messages(queue: str) -> bool:
    from celery import current_app

    with current_app.connection_for_write() as conn:
        channel = conn.default_channel
        try:
            _name, count, _consumers = channel.queue_declare(queue, passive=True)
        except Exception:
            return False
        return count > 0


def test_message_lost_between_commit_and_publish__is_republished(e2e_env, workers, durable):
    # durable (the in-process runner) swallows the publication: the message is "lost".
    result = tasks.three_steps.apply_async((2,), queue=e2e_env["queue"])
    assert durable.published and Run.objects.get(id=result.id).status == RunStatus.QUEUED
    durable.__exit__()  # back to the real broker and clock for the worker's sweeper
    workers("sweeper")
    assert result.get(timeout=60) == 9
    assert body_counts(result.id) == {"one": 1, "two": 1, "three": 1}


def test_get__returns_the_value_after_step_retries(e2e_env, workers):
    workers("retries")
    result = tasks.flaky.apply_async((2,), queue=e2e_env["queue"])
    assert result.get(timeout=60) == [1, 3]
    assert get_run(result.id).executions == 3


def test_get__raises_the_runs_error(e2e_env, workers):
    workers("errors")
    result = tasks.non_retriable.apply_async(queue=e2e_env["queue"])
    with pytest.raises(Exception) as info:
        result.get(timeout=60)
    assert "card declined" in str(info.value)
    assert get_run(result.id).status == RunStatus.FAILED


def test_plain_tasks__keep_working_beside_durable_ones(e2e_env, workers):
    workers("mixed")
    plain = tasks.plain.apply_async((21,), queue=e2e_env["queue"])
    durable_run = tasks.add.apply_async((1, 2), queue=e2e_env["queue"])
    assert plain.get(timeout=60) == 42
    assert durable_run.get(timeout=60) == 3
    assert not Run.objects.filter(id=plain.id).exists()


def test_no_worker_left_behind(e2e_env, workers):
    worker = workers("reaped")
    pid = worker.process.pid
    worker.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # signal 0: does the process group still exist?
