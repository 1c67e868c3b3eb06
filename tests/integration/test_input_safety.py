"""What enters through the public API is checked once, named when refused, stored safely otherwise.

Issue 13, findings 3, 4, 7, 8, 9 and 11: cyclic and deep values, flow-control keys from
arguments, event ids reused after the idempotency window, raw database errors at entry
points, unbounded error text. Every refusal is a ``DurableError`` subclass and stores nothing.
"""

from datetime import datetime, timedelta

import pytest

import celery_durable
from celery_durable import (
    Concurrency,
    DurableConfigError,
    DurableError,
    RunNotFound,
    SerializationError,
    durable_task,
    step,
)
from celery_durable.exceptions import StepIdError
from celery_durable.models import Event, FlowState, Run, Slot, Step
from celery_durable.states import RunStatus

MAX_DEPTH = 100  # the documented cap (celery_durable.serialization.MAX_DEPTH)
pytestmark = pytest.mark.timeout(60)  # a cyclic value used to hang: fail, don't wait 300 s


def counts():
    return {model.__name__: model.objects.count() for model in (Run, Step, Event, FlowState, Slot)}


def nested(depth, leaf=1):
    """A value of ``depth`` levels of lists (``nested(1) == [1]``)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def cyclic_list():
    value = [1]
    value.append(value)
    return value


def cyclic_dict():
    value = {"a": 1}
    value["self"] = {"inner": [value]}
    return value


@durable_task(name="is.echo")
def echo(*args, **kwargs):
    return step.run("echo", lambda: [list(args), kwargs])


@durable_task(name="is.identity")
def identity(value, k=None):
    return step.run("identity", lambda: value)


@durable_task(name="is.returns")
def returns(kind):
    return step.run("value", lambda: {"cycle": cyclic_list(), "deep": nested(MAX_DEPTH + 1)}[kind])


@durable_task(name="is.step_id")
def step_id_task(sid):
    return step.run(sid, lambda: 1)


@durable_task(name="is.wait")
def wait_task(name):
    return step.wait_for_event("w", name, timeout=60)


@durable_task(name="is.huge_error")
def huge_error():
    def fail():
        raise celery_durable.NonRetriableError("x" * 5_000_000)

    return step.run("fail", fail)


# --- 3 and 4: cyclic and deep values -----------------------------------------------------------


@pytest.mark.parametrize("make", [cyclic_list, cyclic_dict], ids=["list", "dict"])
@pytest.mark.parametrize("entry", ["delay", "delay_kwargs", "send_event"])
def test_a_value_that_contains_itself__is_refused_by_name(durable, make, entry):
    before = counts()
    with pytest.raises(SerializationError, match="contains itself"):
        if entry == "delay":
            echo.delay(make())
        elif entry == "delay_kwargs":
            echo.delay(value=make())
        else:
            celery_durable.send_event("is.cycle", {"value": make()})
    assert counts() == before


@pytest.mark.parametrize("entry", ["delay", "send_event"])
def test_nesting_deeper_than_the_cap__is_refused_at_the_entry_point(durable, entry):
    before = counts()
    with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH}"):
        if entry == "delay":
            echo.delay(nested(MAX_DEPTH + 1))
        else:
            celery_durable.send_event("is.deep", {"v": nested(MAX_DEPTH)})  # the data dict is one more
    assert counts() == before


def test_nesting_up_to_the_cap__is_stored_and_runs(durable):
    value = nested(MAX_DEPTH, leaf="leaf")
    run = identity.delay(value, k=value)
    durable.run_until_idle()
    assert durable.result(run.id) == value
    assert Run.objects.get(id=run.id).kwargs_value == {"k": value}
    celery_durable.send_event("is.deep", {"v": nested(MAX_DEPTH - 1)})
    assert Event.objects.get(name="is.deep").data_value == {"v": nested(MAX_DEPTH - 1)}
    from celery_durable import serialization

    assert serialization.MAX_DEPTH == MAX_DEPTH


def test_surrogates_and_nul_inside_values__are_stored_and_round_trip(durable):
    value = {SURROGATE: ["\ud800", "a\x00b"]}
    run = echo.delay(value, k=value)
    durable.run_until_idle()
    assert durable.result(run.id) == [[value], {"k": value}]
    celery_durable.send_event("is.text", value)
    assert Event.objects.get(name="is.text").data_value == value


def test_a_shared_but_acyclic_value__is_not_a_cycle(durable):
    shared = [1, 2]
    run = echo.delay([shared, shared], {"a": shared, "b": shared})
    assert Run.objects.get(id=run.id).args_value == [[[1, 2], [1, 2]], {"a": [1, 2], "b": [1, 2]}]


def test_a_value_that_doubles_at_every_level__is_refused_without_walking_it(durable):
    value = [1]
    for _ in range(60):  # 2**60 leaves through shared references
        value = [value, value]
    before = counts()
    with pytest.raises(SerializationError):
        echo.delay(value)
    assert counts() == before


@pytest.mark.parametrize("kind", ["cycle", "deep"])
def test_a_step_returning_a_cyclic_or_too_deep_value__fails_the_run_by_name(durable, kind):
    run = returns.delay(kind)
    durable.run_until_idle(max_executions=5)
    stored = Run.objects.get(id=run.id)
    assert stored.status == RunStatus.FAILED
    assert stored.error_value["type"] == "SerializationError"


# --- 7: flow-control keys from arguments --------------------------------------------------------


@durable_task(name="is.per_user", concurrency=Concurrency(limit=1, key="user"))
def per_user(user):
    return user


@durable_task(name="is.once", idempotency_key="key")
def once(key):
    return key


LONG = "u" * 300


@pytest.mark.parametrize(
    "first, second",
    [(LONG + "a", LONG + "b"), ("a" * 250 + "x", "a" * 250 + "y"), (7, "7"), ("a\x00", "a"), ("\ud800", "\ud801")],
    ids=["long", "long-after-prefix", "int-vs-str", "nul", "surrogates"],
)
def test_distinct_concurrency_keys__never_share_a_slot(durable, first, second):
    a, b = per_user.delay(first), per_user.delay(second)
    assert {Run.objects.get(id=a.id).status, Run.objects.get(id=b.id).status} == {RunStatus.QUEUED}
    keys = list(Slot.objects.values_list("key", flat=True))
    assert len(keys) == 2 and all(len(key) <= 255 for key in keys)
    assert per_user.delay(first).id not in (a.id, b.id)
    assert Run.objects.filter(status=RunStatus.PENDING).count() == 1  # the same key waits for its slot


@pytest.mark.parametrize(
    "first, second",
    [(LONG + "a", LONG + "b"), (7, "7"), ("a\x00", "a"), ("\ud800", "\ud801")],
    ids=["long", "int-vs-str", "nul", "surrogates"],
)
def test_idempotency_keys__distinct_keys_are_distinct_runs_and_a_repeat_is_the_same_run(durable, first, second):
    a, b = once.delay(first), once.delay(second)
    assert a.id != b.id
    assert once.delay(first).id == a.id and once.delay(second).id == b.id
    assert Run.objects.count() == 2
    assert all(len(name) <= 255 for name in FlowState.objects.values_list("name", flat=True))


def test_the_admin_finds_a_run_by_its_long_or_quoted_key(durable):
    from celery_durable.admin.changelist import runs_by_flow_key

    a, b = once.delay(LONG), once.delay(7)
    assert runs_by_flow_key(LONG, ["is.once"]) == [a.id]
    assert runs_by_flow_key("7", ["is.once"]) == [b.id]


@durable_task(name="is.power", idempotency_key=lambda n: 10**n)
def power(n):
    return n


def test_an_int_key_too_large_to_print__is_refused_by_name(durable):
    before = counts()
    with pytest.raises(DurableConfigError, match="too large"):
        power.delay(5000)
    assert counts() == before


# --- 8: event ids reused after the idempotency window ------------------------------------------


@pytest.mark.parametrize("length", [255, 254, 200])
def test_an_event_id_reused_after_the_window__records_a_new_event_every_time(durable, length):
    event_id = "e" * length
    for n in range(3):
        event = celery_durable.send_event("is.reused", {"n": n}, id=event_id)
        assert event.data == {"n": n} and event.id == event_id
        assert celery_durable.send_event("is.reused", {"n": "again"}, id=event_id).data == {"n": n}
        durable.clock.advance(timedelta(hours=25))
    assert Event.objects.filter(name="is.reused").count() == 3
    assert set(Event.objects.filter(name="is.reused").values_list("event_id", flat=True)) == {event_id}


# --- 9: raw errors at public entry points ------------------------------------------------------

SURROGATE = "a\udc80b"


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: celery_durable.send_event(SURROGATE), DurableConfigError),
        (lambda: celery_durable.send_event("ok", id=SURROGATE), DurableConfigError),
        (lambda: celery_durable.get_run(SURROGATE), RunNotFound),
        (lambda: celery_durable.cancel(SURROGATE), RunNotFound),
        (lambda: celery_durable.replay(SURROGATE), RunNotFound),
        (lambda: echo.apply_async((1,), task_id=SURROGATE), DurableConfigError),
        (lambda: echo.apply_async((1,), task_id="t" * 256), DurableConfigError),
        (lambda: echo.apply_async((1,), task_id="a\x00"), DurableConfigError),
    ],
)
def test_bad_text_at_entry_points__is_a_named_error_and_stores_nothing(durable, call, error):
    before = counts()
    with pytest.raises(error):
        call()
    assert counts() == before


def test_a_cancel_reason_with_a_surrogate__is_refused_and_changes_nothing(durable):
    run = echo.delay(1)
    with pytest.raises(DurableConfigError):
        celery_durable.cancel(run.id, SURROGATE)
    assert Run.objects.get(id=run.id).status == RunStatus.QUEUED


@pytest.mark.parametrize("sid", [SURROGATE, "\ud800"])
def test_a_step_id_with_a_surrogate__fails_the_run_with_step_id_error(durable, sid):
    run = step_id_task.delay(sid)
    durable.run_until_idle(max_executions=3)
    stored = Run.objects.get(id=run.id)
    assert stored.status == RunStatus.FAILED and stored.error_value["type"] == StepIdError.__name__


def test_a_wait_name_with_a_surrogate__fails_the_run_by_name(durable):
    run = wait_task.delay(SURROGATE)
    durable.run_until_idle(max_executions=3)
    stored = Run.objects.get(id=run.id)
    assert stored.status == RunStatus.FAILED and stored.error_value["type"] == DurableConfigError.__name__


@pytest.mark.parametrize(
    "options",
    [
        {"countdown": float("nan")},
        {"countdown": float("inf")},
        {"countdown": 1e20},
        {"countdown": "abc"},
        {"countdown": True},
        {"countdown": [5]},
        {"eta": "tomorrow"},
        {"eta": 5},
        {"eta": datetime(2030, 1, 1)},  # naive while USE_TZ=True: which zone? refused
        {"eta": "2030-01-01T00:00:00"},  # naive as text too
        {"eta": datetime.max.replace(tzinfo=None)},
    ],
    ids=repr,
)
def test_bad_countdown_or_eta__is_a_named_error_and_stores_nothing(durable, options):
    before = counts()
    with pytest.raises(DurableConfigError):
        echo.apply_async((1,), **options)
    assert counts() == before


def test_good_countdown_and_eta__still_schedule_the_run(durable):
    now = durable.clock.now()
    a = echo.apply_async((1,), countdown=30)
    b = echo.apply_async((1,), eta=now + timedelta(hours=1))
    c = echo.apply_async((1,), eta=(now + timedelta(hours=2)).isoformat())
    assert Run.objects.get(id=a.id).wake_at == now + timedelta(seconds=30)
    assert Run.objects.get(id=b.id).wake_at == now + timedelta(hours=1)
    assert Run.objects.get(id=c.id).wake_at == now + timedelta(hours=2)


# --- 11: unbounded error text -------------------------------------------------------------------


def test_a_huge_exception_message__is_stored_capped_with_a_marker(durable):
    from celery_durable.conf import get_settings

    cap = get_settings().MAX_ERROR_TEXT_BYTES
    run = huge_error.delay()
    durable.run_until_idle(max_executions=3)
    stored = Run.objects.get(id=run.id)
    assert stored.status == RunStatus.FAILED
    for text in (stored.error, Step.objects.get(run_id=run.id, step_id="fail").error):
        assert len(text.encode()) < 2 * cap + 1000, len(text)
    record = stored.error_value
    assert record["message"].startswith("xxx") and "truncated: 5000000 bytes" in record["message"]
    assert len(record["message"].encode()) <= cap
    assert len(record["traceback"].encode()) <= cap


def test_the_error_text_cap__is_a_setting(durable, settings):
    settings.CELERY_DURABLE = {"MAX_ERROR_TEXT_BYTES": 2000}
    run = huge_error.delay()
    durable.run_until_idle(max_executions=3)
    assert len(Run.objects.get(id=run.id).error) < 4500


def test_refused_calls_are_durable_errors():
    assert issubclass(SerializationError, DurableError) and issubclass(DurableConfigError, DurableError)
