"""The base-layer checks of issue 13: values, keys, text, times and error text."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import DurableConfigError, SerializationError, serialization, start_time, validation
from celery_durable.flow.keys import MAX_STORED_KEY, key_text, stored_key
from celery_durable.runtime.errors import cap_text, error_record

# --- values ------------------------------------------------------------------------------------


def test_check_value__depth_is_counted_in_containers():
    value = 0
    for _ in range(serialization.MAX_DEPTH):
        value = {"k": value}
    serialization.check_value(value, "v")
    with pytest.raises(SerializationError, match="deeper than"):
        serialization.check_value([value], "v")


def test_check_value__a_cycle_through_a_tuple_is_found():
    inner: list = []
    value = (1, {"a": inner})
    inner.append(value)
    with pytest.raises(SerializationError, match="contains itself"):
        serialization.dumps(value, "v")


def test_check_value__independent_of_the_callers_stack():
    def deep(n):
        if n:
            return deep(n - 1)
        value = []
        for _ in range(serialization.MAX_DEPTH - 1):
            value = [value]
        return serialization.loads(serialization.dumps_value(value, "v")) == value

    assert deep(800)  # near the recursion limit: the check walks without recursion


def test_dumps__more_values_than_bytes_is_too_large_before_encoding():
    value = [0]
    for _ in range(40):
        value = [value, value]
    with pytest.raises(serialization.StepOutputTooLarge, match="MAX_STEP_OUTPUT_BYTES"):
        serialization.dumps(value, "output", max_bytes=1000)


# --- keys --------------------------------------------------------------------------------------

KEYS = st.integers() | st.text()


@given(a=KEYS, b=KEYS)
def test_key_text__distinct_keys_have_distinct_texts(a, b):
    if type(a) is not type(b) or a != b:
        assert key_text("t", "k", a) != key_text("t", "k", b)


@given(a=st.text(max_size=400), b=st.text(max_size=400))
def test_stored_key__fits_the_column_and_keeps_distinct_names_apart(a, b):
    stored_a, stored_b = stored_key(a), stored_key(b)
    assert len(stored_a) <= MAX_STORED_KEY and validation.storable(stored_a)
    assert (stored_a == stored_b) == (a == b)


def test_stored_key__a_name_shaped_like_a_hashed_one_is_hashed_too():
    long = "k" * 300
    assert stored_key(stored_key(long)) != stored_key(long)
    assert stored_key("plain") == "plain" and key_text("t", "k", "abc") == "abc" and key_text("t", "k", 7) == "7"


# --- text and times ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "x" * 256, "a\x00", "\udfff", 5, None])
def test_check_identifier__refuses(value):
    with pytest.raises(DurableConfigError):
        validation.check_identifier(value, "id")


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_wake_time__countdown_and_eta():
    assert start_time.wake_time(None, None, NOW) is None
    assert start_time.wake_time(0, None, NOW) is None
    assert start_time.wake_time(90, None, NOW) == NOW + timedelta(seconds=90)
    eta = datetime(2026, 1, 2, 3, tzinfo=timezone(timedelta(hours=2)))
    assert start_time.wake_time(5, eta, NOW) == eta
    assert start_time.wake_time(None, eta, NOW).tzinfo == UTC


@pytest.mark.parametrize("eta", [datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))])
def test_wake_time__an_eta_off_the_calendar_in_utc_is_refused(eta):
    with pytest.raises(DurableConfigError):
        start_time.wake_time(None, eta, NOW)


def test_wake_time__use_tz_false_takes_naive_local_time_and_converts_aware(settings):
    settings.USE_TZ = False
    naive = datetime(2030, 1, 1, 12)
    assert start_time.wake_time(None, naive, NOW) == naive
    assert start_time.wake_time(None, datetime(2030, 1, 1, 12, tzinfo=UTC), NOW).tzinfo is None


# --- error text ----------------------------------------------------------------------------------


@given(text=st.text(max_size=3000), limit=st.integers(100, 2000))
def test_cap_text__fits_and_marks(text, limit):
    for keep_end in (False, True):
        capped = cap_text(text, limit, keep_end=keep_end)
        assert len(capped.encode("utf-8", "surrogatepass")) <= limit
        if capped != text:
            assert "truncated" in capped


def test_error_record__caps_message_and_traceback():
    try:
        raise ValueError("é" * 100_000)
    except ValueError as exc:
        record = error_record(exc, max_bytes=4096)
    assert len(record["message"].encode()) <= 4096 and record["message"].startswith("éé")
    assert len(record["traceback"].encode()) <= 4096 and "truncated" in record["traceback"]


@pytest.mark.parametrize("value", [0, 1023, "64k", True, 1.5])
def test_max_error_text_bytes__must_be_an_int_of_at_least_1024(settings, value):
    from celery_durable.conf import get_settings

    settings.CELERY_DURABLE = {"MAX_ERROR_TEXT_BYTES": value}
    with pytest.raises(DurableConfigError, match="MAX_ERROR_TEXT_BYTES"):
        get_settings()
