"""The step context on an in-memory checkpoint writer: no database, no broker."""

from datetime import UTC, datetime

import pytest

from celery_durable import NonDeterminismError, NonRetriableError, NotInDurableRun, RetryAfter, step
from celery_durable.exceptions import StepIdError, StepNestingError, _StepFailed
from celery_durable.options import RetryPolicy
from celery_durable.runtime import context
from celery_durable.runtime.memory import MemoryCheckpointWriter
from celery_durable.runtime.steps import StepContext, StoredStep


def make(checkpoints=None, retries=3, writer=None, max_output_bytes=1000):
    return StepContext(
        run_id="run-1",
        task_name="t.demo",
        checkpoints=dict(checkpoints or {}),
        writer=writer or MemoryCheckpointWriter(),
        policy=RetryPolicy(retries=retries, retry_jitter=False),
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        max_output_bytes=max_output_bytes,
    )


class Calls:
    def __init__(self):
        self.count = 0

    def __call__(self, value):
        self.count += 1
        return value


def test_new_step__runs_once_and_writes_one_checkpoint():
    writer = MemoryCheckpointWriter()
    ctx = make(writer=writer)
    fn = Calls()
    assert ctx.run("a", fn, 5) == 5
    assert fn.count == 1
    assert writer.writes == 1
    assert writer.stored["a"].output == "5"


def test_completed_step__replays_without_calling_fn():
    writer = MemoryCheckpointWriter()
    ctx = make({"a": StoredStep("a", "run", "completed", '{"x": [1, 2]}', 1)}, writer=writer)
    fn = Calls()
    assert ctx.run("a", fn, None) == {"x": [1, 2]}
    assert fn.count == 0
    assert writer.writes == 0
    assert ctx.replayed == ["a"]


def test_first_execution__returns_what_replay_returns():
    ctx = make()
    assert ctx.run("a", lambda: (1, 2)) == [1, 2]


def test_repeated_step_id__gets_occurrence_suffixes():
    writer = MemoryCheckpointWriter()
    ctx = make(writer=writer)
    for i in range(3):
        ctx.run("charge", lambda i=i: i)
    assert list(writer.stored) == ["charge", "charge#2", "charge#3"]


def test_loop_replay__matches_occurrences():
    stored = {"c": StoredStep("c", "run", "completed", "10", 1), "c#2": StoredStep("c#2", "run", "completed", "20", 1)}
    ctx = make(stored)
    fn = Calls()
    assert [ctx.run("c", fn, 99) for _ in range(3)] == [10, 20, 99]
    assert fn.count == 1


def test_stored_step_of_other_kind__raises_non_determinism():
    ctx = make({"wait": StoredStep("wait", "sleep", "completed", "null", 1)})
    with pytest.raises(NonDeterminismError) as info:
        ctx.run("wait", lambda: 1)
    assert "sleep" in str(info.value) and "step.run" in str(info.value)


@pytest.mark.parametrize("bad", ["", "  ", "a#b", None, 3, "x" * 201])
def test_bad_step_id__raises(bad):
    with pytest.raises(StepIdError):
        make().run(bad, lambda: 1)


def test_failing_step__asks_for_a_retry_with_backoff():
    ctx = make(retries=3)
    with pytest.raises(_StepFailed) as info:
        ctx.run("a", lambda: 1 / 0)
    assert info.value.step_id == "a"
    assert info.value.attempts == 1
    assert info.value.retry_in == 1
    assert isinstance(info.value.error, ZeroDivisionError)


def test_failed_attempts__count_from_the_stored_step():
    ctx = make({"a": StoredStep("a", "run", "failed", None, 3)}, retries=3)
    with pytest.raises(_StepFailed) as info:
        ctx.run("a", lambda: 1 / 0)
    assert info.value.attempts == 4
    assert info.value.retry_in is None  # retries exhausted: the run fails


def test_attempt__is_visible_to_the_step_body():
    ctx = make({"a": StoredStep("a", "run", "failed", None, 1)})
    assert ctx.run("a", lambda: ctx.attempt) == 2


def test_non_retriable_error__fails_at_once():
    ctx = make(retries=5)

    def boom():
        raise NonRetriableError("declined")

    with pytest.raises(_StepFailed) as info:
        ctx.run("a", boom)
    assert info.value.retry_in is None


def test_retry_after__sets_the_delay():
    ctx = make(retries=5)

    def later():
        raise RetryAfter(42)

    with pytest.raises(_StepFailed) as info:
        ctx.run("a", later)
    assert info.value.retry_in == 42


def test_unserializable_output__fails_the_step_without_retry():
    with pytest.raises(_StepFailed) as info:
        make(retries=5).run("a", object)
    assert info.value.retry_in is None
    assert "output of step 'a' of t.demo" in str(info.value.error)


def test_oversized_output__fails_the_step_without_retry():
    with pytest.raises(_StepFailed) as info:
        make(retries=5, max_output_bytes=10).run("a", lambda: "x" * 20)
    assert info.value.retry_in is None
    assert "MAX_STEP_OUTPUT_BYTES" in str(info.value.error)


def test_user_except_exception__cannot_swallow_a_step_failure():
    ctx = make()
    caught = []

    def body():
        try:
            ctx.run("a", lambda: 1 / 0)
        except Exception as exc:  # what user code might do
            caught.append(exc)

    with pytest.raises(_StepFailed):
        body()
    assert caught == []


def test_step_proxy__outside_a_run_raises():
    with pytest.raises(NotInDurableRun):
        step.run("a", lambda: 1)
    with pytest.raises(NotInDurableRun):
        _ = step.run_id


def test_step_proxy__forwards_to_the_active_context():
    ctx = make()
    token = context.activate(ctx)
    try:
        assert step.run_id == "run-1"
        assert step.run("a", lambda: 3) == 3
        assert step.idempotency_key("charge") == "run-1:charge"
    finally:
        context.deactivate(token)


def test_nested_step__raises_instead_of_shifting_occurrences():
    ctx = make()

    def outer():
        return ctx.run("inner", lambda: "inner")

    with pytest.raises(_StepFailed) as info:
        ctx.run("outer", outer)
    assert isinstance(info.value.error, StepNestingError)
    assert info.value.retry_in is None
    assert "'outer'" in str(info.value.error)


def test_idempotency_key__names_the_current_step_inside_its_body_and_the_next_occurrence_outside():
    ctx = make()
    keys = []
    for _ in range(2):
        before = ctx.idempotency_key("charge")
        inside = ctx.run("charge", lambda: ctx.idempotency_key("charge"))
        keys.append((before, inside))
    assert keys == [("run-1:charge", "run-1:charge"), ("run-1:charge#2", "run-1:charge#2")]
