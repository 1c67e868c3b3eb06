"""Worker log lines that say what happened to a run, and the warning for a repeated step id."""

import logging

import pytest
from celery import current_app

from celery_durable import durable_task, step
from celery_durable.integration.services import tick
from celery_durable.models import Step
from celery_durable.store import claims
from celery_durable.store.checkpoints import CheckpointStore
from tests.integration.test_handoff import deliver
from tests.testapp import flows, tasks
from tests.testapp.tasks import counted


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.INFO, logger="celery_durable")

    def messages(run_id=None, level=logging.INFO):
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "celery_durable" and r.levelno >= level and (run_id is None or run_id in r.getMessage())
        ]

    return messages


def test_sleep__logs_sleeping_until(durable, logged):
    run = flows.sleepy.delay(3600)
    durable.run_until_idle(advance_clock=False)
    wake_at = Step.objects.get(run_id=run.id, step_id="nap").output_value["wake_at"]
    (line,) = [m for m in logged(run.id) if "sleeping" in m]
    assert f"sleeping until {wake_at:%Y-%m-%d %H:%M:%S}" in line
    assert "f.sleepy" in line and "'nap'" in line


def test_wait__logs_the_event_awaited(durable, logged):
    run = flows.confirm.delay(7)
    durable.run_until_idle(advance_clock=False)
    (line,) = [m for m in logged(run.id) if "waiting" in m]
    assert "waiting for event 'user.confirmed' until " in line
    assert "'confirmation'" in line


def test_child_runs__log_how_many_children(durable, logged):
    run = flows.parent.delay(2)  # invoke one child, then gather four
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == {"total": 4, "gathered": [1, 2, 3, 8]}
    lines = [m for m in logged(run.id) if "waiting for" in m]
    assert "waiting for 1 child run (step 'sum')" in lines[0]
    assert "waiting for 4 child runs (step 'fan')" in lines[1]


def test_inline_hand_off__is_logged(durable, logged, settings):
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 5}
    first, second = flows.per_user.delay(7), flows.per_user.delay(7)
    deliver(flows.per_user, first.id)
    (line,) = [m for m in logged(second.id) if "handed off" in m]
    assert f"handed off inline by run {first.id}" in line


def test_reaped_run__logs_resume_after_a_lost_worker(durable, logged):
    run = tasks.three_steps.delay(1)
    claim = claims.claim(run.id, "dead-worker", 30)
    CheckpointStore(run.id, claim.generation).save_output("one", "run", "2", 1, durable.clock.now(), False)
    durable.clock.advance(31)
    assert tick(current_app).recovered == 1
    (line,) = logged(run.id, logging.WARNING)
    assert "worker was lost" in line and "resumes after a lost worker" in line


# --- a step id used twice -------------------------------------------------------------------


@durable_task(name="logs.copy_pasted")
def copy_pasted(n):
    a = step.run("fetch", counted, "fetch-a", n)
    b = step.run("fetch", counted, "fetch-b", n + 1)  # copy-paste: should have been "fetch_b"
    c = step.run("fetch", counted, "fetch-c", n + 2)
    step.sleep("pause", 60)
    return a + b + c


@durable_task(name="logs.looped")
def looped(n):
    return [step.run("fetch", counted, "fetch", i) for i in range(n)]


def test_step_id_repeated_from_another_line__warns_once_per_run(durable, logged):
    run = copy_pasted.delay(1)
    durable.run_until_idle(advance_clock=False)  # up to the sleep
    warnings = logged(run.id, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "step id 'fetch' is used again at" in warnings[0]
    assert "recorded as 'fetch#2'" in warnings[0]
    assert "test_transition_logs.py" in warnings[0]
    durable.run_until_idle()  # the replay after the sleep: no second warning
    assert durable.result(run.id) == 6
    assert len(logged(run.id, logging.WARNING)) == 1


def test_step_id_repeated_in_a_loop__is_silent(durable, logged):
    run = looped.delay(3)
    durable.run_until_idle()
    assert durable.result(run.id) == [0, 1, 2]
    assert logged(run.id, logging.WARNING) == []
