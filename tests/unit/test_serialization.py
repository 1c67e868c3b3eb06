import datetime
import decimal
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import SerializationError, serialization
from celery_durable.exceptions import StepOutputTooLarge

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_json__round_trips(value):
    assert serialization.loads(serialization.dumps(value, "v")) == value


def test_rich_types__round_trip():
    value = {
        "at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 1, 2),
        "amount": decimal.Decimal("10.10"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    assert serialization.loads(serialization.dumps(value, "v")) == value


@pytest.mark.parametrize(
    "value, fragment",
    [(object(), "not JSON-serializable"), ({1: "a"}, "dict key 1"), (float("nan"), "not JSON"), ({2.5: 1}, "dict key")],
)
def test_unstorable_value__names_where(value, fragment):
    with pytest.raises(SerializationError) as info:
        serialization.dumps(value, "argument 'x' of t.task")
    assert "argument 'x' of t.task" in str(info.value)
    assert fragment in str(info.value)


def test_size_limit__counts_the_encoded_json():
    assert serialization.dumps("x" * 20, "out", max_bytes=22) == '"' + "x" * 20 + '"'
    with pytest.raises(StepOutputTooLarge) as info:
        serialization.dumps("x" * 21, "out", max_bytes=22)
    assert "out is 23 bytes" in str(info.value)
