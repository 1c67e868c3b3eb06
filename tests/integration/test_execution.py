"""Execution against the real database: replay, query counts, retries, failures."""

from datetime import UTC, datetime

import pytest
from celery.exceptions import Ignore
from django.db import connection

from celery_durable import NonRetriableError, SerializationError, durable_task, get_run, step
from celery_durable.models import Run, Step
from celery_durable.store import claims
from tests.testapp import tasks
from tests.testapp.models import BodyRun


def bodies(run_id, name=None):
    rows = BodyRun.objects.filter(run_id=run_id)
    return rows.filter(step=name).count() if name else rows.count()


def test_three_steps__each_body_runs_once(durable):
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    assert [bodies(run.id, s) for s in ("one", "two", "three")] == [1, 1, 1]
    assert get_run(run.id).status == "completed"
    assert get_run(run.id).executions == 1


def test_new_step__costs_exactly_one_write_and_replay_costs_none(durable):
    tasks.MEASURED.clear()
    run = tasks.measured.delay()
    durable.run_until_idle()
    assert durable.result(run.id) == 3
    # The second execution replayed steps one and two; the counts are from it.
    assert tasks.MEASURED["one"] == 0
    assert tasks.MEASURED["two"] == 0
    assert get_run(run.id).executions == 2


def test_new_step__is_one_insert_with_no_read_before_it(db, deliver):
    tasks.MEASURED.clear()
    run = tasks.measured.delay()
    deliver(run.id)  # first execution: fails at "three" and is queued again
    # Step "one" runs and defers its checkpoint; step "two" starts by writing it (its boundary).
    assert tasks.MEASURED["one"] == 0
    assert tasks.MEASURED["two"] == 1
    (sql,) = tasks.MEASURED["two.sql"]
    assert sql.lstrip().upper().startswith("INSERT") and "'one'" in sql


def test_execution_start__costs_a_small_constant(db, deliver):
    run = tasks.no_steps.delay(5)
    sqls = []
    assert deliver(run.id, sqls) == {"x": 5}
    # the claim (UPDATE ... RETURNING; MySQL: UPDATE then SELECT; PostgreSQL: the UPDATE in a
    # writable CTE that also reads the checkpoints), the completion UPDATE
    claim = {"mysql": ["UPDATE", "SELECT"], "postgresql": ["WITH"]}.get(connection.vendor, ["UPDATE"])
    expected = [*claim, "UPDATE"]
    assert [s.split()[0] for s in sqls] == expected, sqls


def test_second_execution__loads_all_checkpoints_in_one_query(db, deliver):
    tasks.MEASURED.clear()
    run = tasks.measured.delay()
    deliver(run.id)
    sqls = []
    assert deliver(run.id, sqls) == 3
    ours = [s for s in sqls if "testapp" not in s]  # leave out the step body's own queries
    reads_steps = f"FROM {connection.ops.quote_name(Step._meta.db_table)}"
    assert sum(1 for s in ours if reads_steps in s) == 1
    # claim (+ load the run on MySQL), load checkpoints, then the checkpoint of "three" (an
    # UPDATE of its failed row) with the completion. PostgreSQL: two statements, the claim's
    # UPDATE in a writable CTE that reads the checkpoints too, and the completion's writable
    # CTE; elsewhere the completion is one transaction (a savepoint inside the test's).
    if connection.vendor == "postgresql":
        assert [s.split()[0] for s in ours] == ["WITH", "WITH"] and reads_steps in ours[0], ours
        return
    claim = ["UPDATE", "SELECT"] if connection.vendor == "mysql" else ["UPDATE"]
    assert [s.split()[0] for s in ours] == [*claim, "SELECT", "SAVEPOINT", "UPDATE", "UPDATE", "RELEASE"], ours


def test_second_execution__with_outputs_past_the_aggregate_limit__reads_them_row_by_row(db, deliver, monkeypatch):
    """PostgreSQL's claim aggregates the checkpoints only up to a size; past it they are read as rows."""
    monkeypatch.setattr(claims, "AGGREGATED_CHECKPOINTS_MAX_BYTES", 1)
    tasks.MEASURED.clear()
    run = tasks.measured.delay()
    deliver(run.id)
    sqls = []
    assert deliver(run.id, sqls) == 3
    assert (tasks.MEASURED["one"], tasks.MEASURED["two"]) == (0, 0)  # both replayed from their checkpoints
    reads_steps = f"FROM {connection.ops.quote_name(Step._meta.db_table)}"
    assert [s.split()[0] for s in sqls if "testapp" not in s and reads_steps in s][-1] == "SELECT"


TRICKY = {
    "quotes": "say \"hi\" \\ and 'bye'",
    "unicode": "naïve ☃ 𝄞 עברית",
    "control": "tab\tnewline\nreturn\r",
    "looks_tagged": '{"__type__": "datetime", "__value__": "not a date"}',
    "when": datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
    "big": "x" * 100_000,
    "nested": [1, 2.5, None, True, {"k": ["v"]}],
}


@durable_task(name="t.tricky_outputs", retries=1, retry_backoff=False, default_retry_delay=0)
def tricky_outputs():
    def tricky():
        BodyRun.objects.create(run_id=step.run_id, step="tricky")
        return TRICKY

    def fails_once():
        if not BodyRun.objects.filter(run_id=step.run_id, step="fails_once").exists():
            BodyRun.objects.create(run_id=step.run_id, step="fails_once")
            raise ValueError("fail once")

    value = step.run("tricky", tricky)
    step.run("fails_once", fails_once)
    return value


def test_second_execution__replays_each_checkpoint_exactly_as_stored(durable):
    """Outputs read back with the claim (PostgreSQL: aggregated as JSON in its statement) are the stored text."""
    run = tricky_outputs.delay()
    durable.run_until_idle()
    assert get_run(run.id).executions == 2 and bodies(run.id, "tricky") == 1
    assert durable.result(run.id) == TRICKY
    stored = Step.objects.get(run_id=run.id, step_id="tricky").output
    Run.objects.filter(id=run.id).update(status="queued")  # claimable again, to read what the claim loads
    claim = claims.claim(run.id, "test-owner", 60)
    assert claim is not None and claim.checkpoints["tricky"].output == stored


def test_duplicate_delivery__runs_nothing_and_answers_with_the_stored_result(db, deliver):
    run = tasks.add.delay(1, 2)
    assert deliver(run.id) == 3
    assert deliver(run.id) == 3  # e.g. redelivered after its worker died before storing the result
    assert get_run(run.id).executions == 1
    assert len(durable_steps(run.id)) == 1


def durable_steps(run_id):
    return list(Step.objects.filter(run_id=run_id))


def test_duplicate_delivery__of_a_running_run_is_dropped(db, deliver):
    from celery_durable.store import claims

    run = tasks.add.delay(1, 2)
    assert claims.claim(run.id, "another-worker", 30) is not None
    assert isinstance(deliver(run.id), Ignore)


def test_loop__steps_get_occurrence_suffixes(durable):
    run = tasks.loop.delay(3)
    durable.run_until_idle()
    assert durable.result(run.id) == [0, 1, 2]
    assert [s for s, _status, _a in durable.history(run.id)] == ["item", "item#2", "item#3"]


def test_flaky_step__retries_then_completes_keeping_earlier_steps(durable):
    run = tasks.flaky.delay(2)
    executions = durable.run_until_idle()
    assert durable.result(run.id) == [1, 3]
    assert executions == 3
    assert bodies(run.id, "before") == 1
    assert bodies(run.id, "flaky") == 3
    assert durable.history(run.id) == [("before", "completed", 1), ("flaky", "completed", 3)]


def test_flaky_step__exhausting_retries_fails_the_run(durable):
    run = tasks.flaky.delay(10)
    durable.run_until_idle()
    record = get_run(run.id)
    assert record.status == "failed"
    assert bodies(run.id, "flaky") == 3  # first try + retries=2
    assert record.error_value["type"] == "ValueError"
    assert record.error_value["message"] == "failure 3"
    assert durable.history(run.id) == [("before", "completed", 1), ("flaky", "failed", 3)]


def test_non_retriable_error__fails_at_once(durable):
    run = tasks.non_retriable.delay()
    assert durable.run_until_idle() == 1
    record = get_run(run.id)
    assert record.status == "failed"
    assert record.error_value["type"] == "NonRetriableError"
    assert bodies(run.id, "boom") == 1


def test_retry_after__retries_the_step(durable):
    run = tasks.retry_after.delay()
    durable.run_until_idle()
    assert durable.result(run.id) == "ok"
    assert bodies(run.id, "ra") == 2


def test_error_outside_steps__fails_the_run(durable):
    run = tasks.outside_error.delay()
    durable.run_until_idle()
    record = get_run(run.id)
    assert record.status == "failed"
    assert record.error_value["type"] == "KeyError"


def test_unserializable_output__fails_the_step_naming_it(durable):
    run = tasks.bad_output.delay()
    assert durable.run_until_idle() == 1
    record = get_run(run.id)
    assert record.status == "failed"
    assert record.error_value["type"] == "SerializationError"
    assert "output of step 'bad' of t.bad_output" in record.error_value["message"]


def test_oversized_output__fails_the_step_naming_it(durable, settings):
    settings.CELERY_DURABLE = {"MAX_STEP_OUTPUT_BYTES": 100}
    run = tasks.big_output.delay(500)
    assert durable.run_until_idle() == 1
    record = get_run(run.id)
    assert record.status == "failed"
    assert record.error_value["type"] == "StepOutputTooLarge"
    assert "'big'" in record.error_value["message"]


def test_unserializable_argument__stores_and_publishes_nothing(durable):
    with pytest.raises(SerializationError) as info:
        tasks.add.delay(object(), 1)
    assert "argument 0 of t.add" in str(info.value)
    with pytest.raises(SerializationError) as info:
        tasks.add.delay(1, y={1: 2})
    assert "argument 'y' of t.add" in str(info.value)
    assert Run.objects.count() == 0
    assert durable.published == []


def test_wrong_arguments__raise_type_error_and_store_nothing(durable):
    with pytest.raises(TypeError):
        tasks.add.delay(1, 2, 3)
    assert Run.objects.count() == 0


def test_injected_fault__is_retried(durable):
    durable.fail_step("t.three_steps", "two", ConnectionError("flaky network"), times=2)
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    assert durable.history(run.id)[1] == ("two", "completed", 3)
    assert bodies(run.id, "one") == 1


def test_injected_non_retriable_fault__fails_the_run(durable):
    durable.fail_step("t.three_steps", "one", NonRetriableError("nope"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert get_run(run.id).status == "failed"
    assert bodies(run.id) == 0


def test_same_task_id__starts_one_run(durable):
    first = tasks.add.apply_async((1, 2), task_id="order-17")
    second = tasks.add.apply_async((5, 5), task_id="order-17")
    assert first.id == second.id == "order-17"
    durable.run_until_idle()
    assert durable.result("order-17") == 3
    assert Run.objects.count() == 1


def test_countdown__waits_in_the_database_not_the_broker(durable):
    run = tasks.add.apply_async((1, 2), countdown=3600)
    assert durable.published == []
    assert durable.run_until_idle(advance_clock=False) == 0
    assert get_run(run.id).wake_at is not None
    assert durable.run_until_idle() == 1
    assert durable.result(run.id) == 3


def test_direct_call__runs_steps_inline_without_storing():
    assert tasks.add(2, 3) == 5


def test_direct_call__raises_the_step_error_itself():
    with pytest.raises(ZeroDivisionError):
        tasks.direct_fail()


def test_oversized_arguments__are_refused_at_delay(durable, settings):
    settings.CELERY_DURABLE = {"MAX_ARGUMENT_BYTES": 50}
    with pytest.raises(SerializationError) as info:
        tasks.add.delay("x" * 100, "y")
    assert "argument 0 of t.add" in str(info.value)
    assert "MAX_ARGUMENT_BYTES" in str(info.value)
    assert Run.objects.count() == 0
