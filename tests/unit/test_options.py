from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import CancelOn, Concurrency, Debounce, DurableConfigError, RateLimit, Singleton, Throttle, Timeouts
from celery_durable.options import RetryPolicy


@pytest.mark.parametrize(
    "build",
    [
        lambda: Concurrency(limit=0),
        lambda: Concurrency(limit=1.5),
        lambda: Concurrency(limit=True),
        lambda: Concurrency(limit=1, key="user id"),
        lambda: Concurrency(limit=1, key=3),
        lambda: Concurrency(limit=1, scope="global"),
        lambda: Concurrency(limit=1, scope="planet"),
        lambda: Throttle(limit=1, period=0),
        lambda: Throttle(limit=1, period=timedelta(seconds=-1)),
        lambda: Throttle(limit=1, period=1, burst=0),
        lambda: RateLimit(limit=0, period=1),
        lambda: Debounce(period=10, timeout=5),
        lambda: Debounce(period="10"),
        lambda: Singleton(mode="replace"),
        lambda: CancelOn(event=""),
        lambda: Timeouts(start=-1),
        lambda: RetryPolicy(retries=-1),
        lambda: RetryPolicy(retry_backoff=0),
        lambda: RetryPolicy(retry_jitter="yes"),
    ],
)
def test_option__rejects_invalid_values(build):
    with pytest.raises(DurableConfigError):
        build()


def test_option__accepts_valid_values():
    assert Concurrency(limit=2, key="order.customer_id").limit == 2
    assert Concurrency(limit=1, scope="global", name="openai").name == "openai"
    assert Throttle(limit=10, period=timedelta(minutes=1), burst=3).burst == 3
    assert Debounce(period=5, timeout=timedelta(seconds=60)).timeout == timedelta(seconds=60)
    assert Singleton(key=lambda user_id: user_id, mode="cancel").mode == "cancel"


def test_options__are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        Concurrency(1)  # type: ignore[misc]
    option = Concurrency(limit=1)
    with pytest.raises(AttributeError):
        option.limit = 2  # type: ignore[misc]


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=1000), st.booleans())
def test_retry_delay__follows_celery_exponential_backoff(failures, maximum, jitter):
    policy = RetryPolicy(retries=50, retry_backoff=True, retry_backoff_max=maximum, retry_jitter=jitter)
    ceiling = min(maximum, 2 ** (failures - 1))
    delay = policy.delay(failures)
    assert 0 <= delay <= ceiling
    if not jitter:
        assert delay == ceiling


def test_retry_budget__counts_retries_after_the_first_attempt():
    policy = RetryPolicy(retries=2)
    assert [policy.should_retry(n) for n in (1, 2, 3)] == [True, True, False]


def test_retry_delay__without_backoff_uses_default_retry_delay():
    assert RetryPolicy(retry_backoff=False, default_retry_delay=7).delay(3) == 7
