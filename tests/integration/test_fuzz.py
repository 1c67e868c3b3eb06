"""Fuzzing the public entry points with hypothesis (SPEC §10.5: bad input gets a named error).

Every call either succeeds or raises a subclass of ``DurableError``; never a ``TypeError``,
``KeyError`` or database error. A refused call changes nothing in the database.

Each example runs inside a savepoint of the test's transaction, so a database error (which
would abort a PostgreSQL transaction) surfaces as a failure of that example only. The
``durable`` fixture is function-scoped and shared by the examples of a test: they only add
rows, and every assertion compares counts taken around one call.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import celery_durable
from celery_durable import (
    CancelOn,
    Concurrency,
    Debounce,
    DurableError,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    durable_task,
    step,
)
from celery_durable.models import Event, FlowState, Run, Slot, Step
from celery_durable.options import RetryPolicy

# CI runs a bounded number of examples; DURABLE_FUZZ_EXAMPLES=2000 fuzzes longer by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("DURABLE_FUZZ_EXAMPLES", "40")),
    # CI replays the same examples every time (a gate must not fail at random); set
    # DURABLE_FUZZ_RANDOM=1 (and DURABLE_FUZZ_EXAMPLES=300) to explore new inputs.
    derandomize=os.environ.get("DURABLE_FUZZ_RANDOM") != "1",
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON values as Python produces them (kombu's JSON: str keys, finite floats).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["__type__", "__value__"]), children, max_size=4)
    ),
    max_leaves=12,
)
# Anything a caller might pass by mistake.
ANYTHING = (
    JSON
    | st.floats()
    | st.binary(max_size=8)
    | st.sets(st.integers(), max_size=3)
    | st.tuples(st.integers())
    | st.dictionaries(st.integers(), st.integers(), max_size=2)
    | st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6))
    | st.builds(object)
)
TEXT = st.text(max_size=300) | st.sampled_from(["", " ", "#", "a#2", "\x00", "x" * 256, "__import__('os')"])


@durable_task(name="fz.echo")
def echo(*args: Any, **kwargs: Any) -> Any:
    return step.run("echo", lambda: [list(args), kwargs])


@durable_task(name="fz.step_ids")
def step_ids(ids: list[str]) -> list[int]:
    return [step.run(step_id, lambda n=n: n) for n, step_id in enumerate(ids)]


def counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (Run, Step, Event, FlowState, Slot)}


def attempt(call: Any) -> tuple[Any, DurableError | None]:
    """Call ``call`` in a savepoint; its result, or the ``DurableError`` it raised (anything else fails)."""
    try:
        with transaction.atomic():
            return call(), None
    except DurableError as exc:
        assert type(exc).__module__.startswith("celery_durable"), exc
        return None, exc


def refused_or_done(call: Any) -> tuple[Any, DurableError | None]:
    """``attempt``, and a refused call left every durable table as it was."""
    before = counts()
    result, error = attempt(call)
    if error is not None:
        assert counts() == before, f"{type(error).__name__} but the tables changed"
    return result, error


# --- arguments ---------------------------------------------------------------------------------


@FUZZ
@given(args=st.lists(JSON, max_size=4), kwargs=st.dictionaries(st.text(min_size=1, max_size=10), JSON, max_size=4))
@example(args=[{"__type__": "nope", "__value__": 1}], kwargs={})  # kombu could not decode it: refused
@example(args=[], kwargs={"a": [{"__value__": "x", "__type__": "bytes"}]})  # it would come back as bytes
def test_delay__json_arguments_round_trip(durable, args, kwargs):
    result, error = refused_or_done(lambda: echo.delay(*args, **kwargs))
    if error is None:
        run = Run.objects.get(id=result.id)
        assert (run.args_value, run.kwargs_value) == (args, kwargs)
    else:  # only a dict shaped like kombu's type marker is refused
        assert type(error).__name__ == "SerializationError" and "__type__" in str(error), error


@FUZZ
@given(value=ANYTHING)
def test_delay__any_argument_is_stored_or_refused_by_name(durable, value):
    _result, error = refused_or_done(lambda: echo.delay(value, key=value))
    if error is not None:
        assert isinstance(error, celery_durable.SerializationError)


# --- step ids ----------------------------------------------------------------------------------


@FUZZ
@given(ids=st.lists(TEXT, min_size=1, max_size=3))
@example(ids=["a\x00b"])  # PostgreSQL refused the checkpoint write; the run was abandoned, not failed
def test_step_ids__run_completes_or_fails_with_a_named_error(durable, ids):
    run_id = step_ids.delay(ids).id
    durable.run_until_idle(max_executions=3, advance_clock=False)
    run = Run.objects.get(id=run_id)
    if run.status == "completed":
        assert run.result_value == list(range(len(ids)))
        stored = list(Step.objects.filter(run_id=run_id).order_by("id").values_list("step_id", flat=True))
        assert len(stored) == len(ids)
    else:
        assert run.status == "failed", run.status
        error = run.error_value
        assert error["module"] == "celery_durable.exceptions" and error["type"] == "StepIdError", error


# --- events ------------------------------------------------------------------------------------


@FUZZ
@given(name=TEXT | ANYTHING, data=st.none() | JSON | ANYTHING, event_id=st.none() | TEXT | ANYTHING)
@example(name="a\x00", data=None, event_id=None)  # was a DataError on PostgreSQL
@example(name="a", data=None, event_id="\x00")
@example(name="a", data={"__type__": "datetime", "__value__": "garbage"}, event_id=None)
def test_send_event__records_or_refuses_by_name(durable, name, data, event_id):
    result, error = refused_or_done(lambda: celery_durable.send_event(name, data, id=event_id))
    if error is None:
        row = Event.objects.get(event_id=result.id)
        assert row.name == name and row.data_value == result.data


# --- run ids -----------------------------------------------------------------------------------


@FUZZ
@given(run_id=TEXT | ANYTHING, from_step=st.none() | TEXT)
@example(run_id="\x00", from_step=None)  # was a DataError on PostgreSQL
def test_get_run_cancel_replay__unknown_ids_are_run_not_found(durable, run_id, from_step):
    for call in (
        lambda: celery_durable.get_run(run_id),
        lambda: celery_durable.cancel(run_id, "fuzzed"),
        lambda: celery_durable.replay(run_id, from_step),
    ):
        _result, error = refused_or_done(call)
        assert isinstance(error, celery_durable.RunNotFound), error


@FUZZ
@given(from_step=st.none() | TEXT | ANYTHING, reason=TEXT | ANYTHING)
@example(from_step="\x00", reason="")  # was a DataError on PostgreSQL
@example(from_step=None, reason="\x00")
def test_cancel_and_replay__of_a_real_run(durable, from_step, reason):
    run_id = echo.delay(1).id
    _run, error = refused_or_done(lambda: celery_durable.cancel(run_id, reason))
    if error is not None:
        return
    assert Run.objects.get(id=run_id).status == "cancelled"
    _run, error = refused_or_done(lambda: celery_durable.replay(run_id, from_step))
    if error is None:
        assert Run.objects.get(id=run_id).status == "queued"
    else:
        assert type(error).__name__ in ("StepNotFound", "DurableConfigError"), error


# --- option objects and durable_task keywords ---------------------------------------------------

OPTION_FIELDS = {
    Concurrency: ("limit", "key", "scope", "name"),
    Throttle: ("limit", "period", "key", "burst"),
    RateLimit: ("limit", "period", "key"),
    Debounce: ("period", "key", "timeout"),
    Singleton: ("key", "mode"),
    CancelOn: ("event", "match"),
    Timeouts: ("start", "finish"),
    RetryPolicy: ("retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "default_retry_delay"),
}
OPTION_VALUES = (
    ANYTHING
    | TEXT
    | st.integers(min_value=-3, max_value=10**18)
    | st.sampled_from([math.inf, -math.inf, math.nan, 1e300, timedelta.max, timedelta(0), "task", "global", "skip"])
)


@FUZZ
@given(cls=st.sampled_from(sorted(OPTION_FIELDS, key=lambda c: c.__name__)), data=st.data())
def test_option_classes__construct_or_raise_durable_config_error(cls, data):
    values = data.draw(st.fixed_dictionaries({}, optional=dict.fromkeys(OPTION_FIELDS[cls], OPTION_VALUES)))
    try:
        cls(**values)
    except celery_durable.DurableConfigError:
        pass
    except TypeError as exc:  # a missing required field is Python's own signature error
        assert "missing" in str(exc) and "required" in str(exc), exc


DURATION = (
    st.integers(1, 10**6)
    | st.floats(0.001, 1e300)
    | st.sampled_from([math.inf, 1e15, timedelta.max, timedelta(days=36500), -1, 0])
)


def of(cls: type, **fields: Any) -> Any:
    """``(cls, keywords)``: an option of the expected kind, built in the test (it may be refused)."""
    return st.tuples(st.just(cls), st.fixed_dictionaries(fields))


# Options of the expected kind (so that they are used at .delay()).
VALID = {
    "concurrency": of(Concurrency, limit=st.integers(1, 3), key=st.sampled_from([None, "a", "b.c"])),
    "throttle": of(Throttle, limit=st.integers(1, 3), period=DURATION, key=st.just("a")),
    "rate_limit": of(RateLimit, limit=st.integers(1, 3), period=DURATION, key=st.just("a")),
    "debounce": of(Debounce, period=DURATION, key=st.just("a"), timeout=st.none() | DURATION),
    "singleton": of(Singleton, key=st.sampled_from([None, "a"]), mode=st.sampled_from(["skip", "cancel"])),
    "timeouts": of(Timeouts, start=st.none() | DURATION, finish=st.none() | DURATION),
}
PLAIN = {
    "cancel_on": st.lists(st.builds(CancelOn, event=st.just("fz.stop"), match=st.just({"a": "a"})), max_size=2),
    "idempotency_key": st.sampled_from(["a", "b.c", "__import__('os')", "a.0", "a; import os"]),
    "priority": st.integers(-700, 700),
    "rate_limit": st.sampled_from(["10/m", "1/s", "abc", "-1/m", 5, -3]),
    "retries": st.integers(-2, 5),
    "default_retry_delay": DURATION,
    "retry_backoff_max": DURATION,
}


def make_option(draw: Any, name: str) -> Any:
    """An option value: usually of the expected kind (so that it is used), sometimes anything."""
    if name in VALID and draw(st.booleans()):
        cls, keywords = draw(VALID[name])
        return cls(**keywords)  # may be refused: DurableConfigError
    return draw(PLAIN.get(name, st.nothing()) | OPTION_VALUES)


KEYWORDS = [
    "retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "default_retry_delay", "priority",
    "concurrency", "throttle", "rate_limit", "debounce", "singleton", "idempotency_key", "timeouts",
    "cancel_on", "on_event", "on_failure", "autoretry_for",
]  # fmt: skip
_declared = 0


@FUZZ
@given(data=st.data())
def test_durable_task_keywords__declare_or_raise_and_then_delay(durable, data):
    from celery import current_app

    global _declared
    names = data.draw(st.sets(st.sampled_from(KEYWORDS), min_size=1, max_size=3))
    _declared += 1
    task_name = f"fz.declared{_declared}"

    def body(a: Any = None, b: Any = None) -> Any:
        return a

    try:
        options = {name: make_option(data.draw, name) for name in sorted(names)}
        task = durable_task(name=task_name, **options)(body)
    except celery_durable.DurableConfigError:
        assert task_name not in current_app.tasks
        return
    try:
        call = data.draw(st.fixed_dictionaries({"a": JSON, "b": st.fixed_dictionaries({"c": JSON})}))
        result, error = refused_or_done(lambda: task.delay(**call))
        if error is None:
            durable.run_until_idle(max_executions=3, advance_clock=False)
            assert Run.objects.get(id=result.id).status != "running"  # the execution ended cleanly
    finally:
        current_app.tasks.pop(task_name, None)


# --- what fuzzing found, pinned ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Timeouts(finish=1e300),  # the deadline overflowed the date at .delay()
        lambda: Timeouts(start=math.inf),
        lambda: Debounce(period=timedelta.max),
        lambda: Throttle(limit=1, period=10**400),  # an int too large for a float
        lambda: CancelOn(event="x", match={"order_id": 1}),  # a non-path failed in send_event
        lambda: CancelOn(event="x", match={"__import__('os')": "a"}),
        lambda: durable_task(name="fz.autoretry", autoretry_for=None)(lambda: None),  # Celery's TypeError
    ],
)
def test_found_by_fuzzing__refused_at_declaration(make):
    with pytest.raises(celery_durable.DurableConfigError):
        make()


def test_found_by_fuzzing__timedelta_retry_options_reach_celery_as_seconds(db):
    from celery import current_app

    def nothing() -> None:
        return None

    task = durable_task(name="fz.td_retry", retry_backoff_max=timedelta(minutes=5), default_retry_delay=timedelta(0))(
        nothing
    )
    try:
        assert (task.retry_backoff_max, task.default_retry_delay) == (300.0, 0.0)
        assert task.retry_policy().retry_backoff_max == 300.0
    finally:
        current_app.tasks.pop("fz.td_retry", None)
