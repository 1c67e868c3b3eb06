from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import DurableConfigError
from celery_durable.flow import gcra
from celery_durable.flow.keys import check_key_spec, resolve_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(
    st.integers(min_value=1, max_value=10),
    st.floats(min_value=1, max_value=600),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=40),
)
def test_throttle__spaces_starts_fifo_and_drops_nothing(limit, period, burst, calls):
    cell = gcra.Cell(limit, period, burst=burst)
    tat, starts = None, []
    for _ in range(calls):  # all at once
        start, tat = gcra.schedule(cell, tat, T0)
        starts.append(start)
    assert starts == sorted(starts)  # FIFO
    assert starts[: min(burst, calls)] == [T0] * min(burst, calls)
    interval = timedelta(seconds=period / limit)
    for earlier, later in zip(starts[burst - 1 :], starts[burst:], strict=False):
        assert later - earlier == interval


def test_key__dotted_path_and_callable():
    bound = {"order": {"customer_id": 7}, "user_id": "u1"}
    assert resolve_key("t", "throttle", "order.customer_id", bound, (), {}) == "7"
    assert resolve_key("t", "throttle", lambda user_id, order: f"{user_id}-x", bound, (), bound) == "u1-x"
    assert resolve_key("t", "throttle", None, bound, (), {}) == "*"


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("order.missing", "missing"),
        (lambda **kw: 1 / 0, "raised"),
        (lambda **kw: [1], "str or int"),
        (lambda **kw: True, "str or int"),
    ],
)
def test_bad_key__names_the_task(key, fragment):
    with pytest.raises(DurableConfigError, match=fragment) as info:
        resolve_key("shop.checkout", "singleton", key, {"order": {}}, (), {"order": {}})
    assert "shop.checkout" in str(info.value)


def test_unknown_key_parameter__is_refused_at_declaration():
    def task(user_id):
        return user_id

    with pytest.raises(DurableConfigError, match="names no parameter"):
        check_key_spec("t", "throttle", "account_id", task)
    check_key_spec("t", "throttle", "user_id.name", task)
