"""Fuzzing the entry points with what broke them (issue 13): deep and cyclic values, lone
surrogates, NUL and long text as keys, names and ids, and bad times at ``apply_async``.

Same contract as :mod:`tests.integration.test_fuzz`: every call either succeeds (and what it
stored round-trips) or raises a named ``DurableError`` and leaves every table as it was.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

import celery_durable
from celery_durable import Concurrency, durable_task
from celery_durable.models import Event, FlowState, Run, Slot
from tests.integration.test_fuzz import ANYTHING, FUZZ, JSON, echo, refused_or_done

# --- issue 13: cyclic and deep values, surrogates, long keys, bad times --------------------------

# Text as callers may have it: lone surrogates (from a decoded byte string), NUL, long runs.
ANY_TEXT = (
    st.text(st.characters(exclude_categories=()), max_size=20)
    | st.sampled_from(["\ud800", "a\udc80b", "\x00", "k" * 300, "7", '"7"', "-0"])
    | st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\U0001f600"]), st.integers(200, 400))
)


@st.composite
def shaped(draw: Any) -> Any:
    """A value nested 0..150 levels deep, sometimes containing itself somewhere."""
    depth = draw(st.integers(0, 150))
    value: Any = draw(JSON)
    outer: Any = None
    for level in range(depth):
        value = {"k": value} if draw(st.booleans()) else [value]
        if level == 0:
            outer = value
    if outer is not None and draw(st.integers(0, 4)) == 0:  # close a cycle at the innermost container
        if isinstance(outer, dict):
            outer["self"] = value
        else:
            outer.append(value)
    return value


def has_cycle(value: Any, path: frozenset[int] = frozenset()) -> bool:
    if not isinstance(value, dict | list):
        return False
    if id(value) in path:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(has_cycle(child, path | {id(value)}) for child in children)


def depth_of(value: Any) -> int:
    if not isinstance(value, dict | list) or not value:
        return int(isinstance(value, dict | list))
    children = value.values() if isinstance(value, dict) else value
    return 1 + max(depth_of(child) for child in children)


@FUZZ
@given(value=shaped())
def test_delay_and_send_event__deep_or_cyclic_values_are_refused_by_name_or_round_trip(durable, value):
    from celery_durable.serialization import MAX_DEPTH

    cyclic = has_cycle(value)
    too_deep = cyclic or depth_of(value) > MAX_DEPTH
    result, error = refused_or_done(lambda: echo.delay(value))
    if error is None:
        assert not too_deep
        assert Run.objects.get(id=result.id).args_value == [value]
    else:
        assert isinstance(error, celery_durable.SerializationError), error
    event, error = refused_or_done(lambda: celery_durable.send_event("fz.shaped", {"v": value}))
    if error is None:
        assert not cyclic and depth_of(value) < MAX_DEPTH
        assert Event.objects.get(dedup_key=event.id).data_value == {"v": value}
    else:
        assert isinstance(error, celery_durable.SerializationError), error


@durable_task(name="fz.keyed", idempotency_key="key", concurrency=Concurrency(limit=5, key="key"))
def keyed(key: Any) -> Any:
    return None


@FUZZ
@given(first=ANY_TEXT | st.integers(), second=ANY_TEXT | st.integers())
@example(first=7, second="7")
@example(first="k" * 300 + "a", second="k" * 300 + "b")
def test_flow_keys__any_text_or_int_is_stored_and_distinct_keys_stay_apart(durable, first, second):
    a, error_a = refused_or_done(lambda: keyed.delay(first))
    b, error_b = refused_or_done(lambda: keyed.delay(second))
    assert error_a is None and error_b is None, (error_a, error_b)
    same = type(first) is type(second) and first == second
    assert (a.id == b.id) == same
    assert keyed.delay(first).id == a.id  # a repeat is the same run
    names = list(FlowState.objects.values_list("name", flat=True)) + list(Slot.objects.values_list("key", flat=True))
    assert all(len(name) <= 255 for name in names)


@FUZZ
@given(name=ANY_TEXT, event_id=st.none() | ANY_TEXT)
def test_send_event__surrogates_and_long_ids_are_refused_by_name_or_recorded(durable, name, event_id):
    result, error = refused_or_done(lambda: celery_durable.send_event(name, {"n": name}, id=event_id))
    if error is None:
        row = Event.objects.get(dedup_key=result.id)  # a repeated id returns the first event
        assert (row.name, row.data_value, row.event_id) == (result.name, result.data, result.id)
        assert event_id in (None, result.id)
    else:
        assert isinstance(error, celery_durable.DurableConfigError), error


@FUZZ
@given(run_id=ANY_TEXT, reason=ANY_TEXT)
def test_run_ids_and_reasons__with_surrogates_are_refused_by_name(durable, run_id, reason):
    for call in (
        lambda: celery_durable.get_run(run_id),
        lambda: celery_durable.replay(run_id, reason),
        lambda: celery_durable.cancel(run_id, reason),
    ):
        _result, error = refused_or_done(call)
        assert isinstance(error, celery_durable.RunNotFound | celery_durable.DurableConfigError), error


TIMES = (
    ANYTHING
    | st.floats()
    | st.integers(-(10**12), 10**12)
    | st.datetimes()
    | st.datetimes(timezones=st.timezones())
    | st.text(max_size=30)
    | st.sampled_from(["2030-01-01T00:00:00+00:00", "2030-01-01", "tomorrow"])
)


@FUZZ
@given(countdown=st.none() | TIMES, eta=st.none() | TIMES, task_id=st.none() | ANY_TEXT)
def test_apply_async__countdown_eta_and_task_id_are_refused_by_name_or_scheduled(durable, countdown, eta, task_id):
    result, error = refused_or_done(lambda: echo.apply_async((1,), countdown=countdown, eta=eta, task_id=task_id))
    if error is None:
        run = Run.objects.get(id=result.id)
        assert task_id in (None, "", run.id)
        assert run.wake_at is None or run.wake_at.tzinfo is not None
    else:
        assert isinstance(error, celery_durable.DurableConfigError), error
