"""Intake-time flow control against the real database (no steps needed)."""

from datetime import timedelta

import pytest

from celery_durable import DurableConfigError, RunSkipped, durable_task, get_run
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.testapp import flows
from tests.testapp.models import BodyRun


def test_idempotency_key__a_second_call_returns_the_first_run(durable):
    first = flows.idempotent.delay(17)
    second = flows.idempotent.delay(17, note="again")
    other = flows.idempotent.delay(18)
    assert first.id == second.id != other.id
    durable.run_until_idle()
    assert durable.result(first.id) == "17"
    assert Run.objects.filter(task_name="f.idempotent").count() == 2
    assert BodyRun.objects.filter(step="charge").count() == 2


def test_idempotency_key__expires_after_the_window(durable):
    first = flows.idempotent.delay(1)
    durable.clock.advance(timedelta(hours=24, seconds=1))
    assert flows.idempotent.delay(1).id != first.id


def test_debounce__last_arguments_win_and_every_caller_gets_the_same_run(durable):
    ids = []
    for version in range(3):
        ids.append(flows.debounced.delay("acme", version).id)
        durable.clock.advance(30)
    assert len(set(ids)) == 1
    assert durable.run_until_idle(advance_clock=False) == 0  # still inside the quiet period
    durable.run_until_idle()
    assert durable.result(ids[0]) == 2
    assert BodyRun.objects.filter(step="reindex").count() == 1


def test_debounce__timeout_caps_the_delay(durable):
    start = durable.clock.now()
    run_id = flows.debounced.delay("acme", 0).id
    for version in range(1, 12):  # a call every 50 s keeps pushing the start out...
        durable.clock.advance(50)
        assert flows.debounced.delay("acme", version).id == run_id
    assert get_run(run_id).wake_at == start + timedelta(seconds=300)  # ...but never past the timeout


def test_singleton_skip__a_second_unfinished_run_is_skipped(durable, django_capture_on_commit_callbacks):
    first = flows.singleton_skip.delay(1)
    durable.run_until_idle(advance_clock=False)
    with django_capture_on_commit_callbacks(execute=True):
        second = flows.singleton_skip.delay(1)
    assert get_run(second.id).status == RunStatus.SKIPPED
    with pytest.raises(RunSkipped):
        second.get(timeout=5)
    assert get_run(flows.singleton_skip.delay(2).id).status == RunStatus.QUEUED  # other keys are free
    durable.run_until_idle()
    assert durable.result(first.id) == 1
    third = flows.singleton_skip.delay(1)  # the first finished: the key is free again
    assert get_run(third.id).status == RunStatus.QUEUED


def test_singleton_cancel__a_new_run_cancels_the_old_one(durable):
    old = flows.singleton_cancel.delay(1, 1)
    durable.run_until_idle(advance_clock=False)
    new = flows.singleton_cancel.delay(1, 2)
    assert get_run(old.id).status == RunStatus.CANCELLED
    durable.run_until_idle()
    assert durable.result(new.id) == 2


def test_rate_limit__skips_calls_beyond_the_limit_in_a_sliding_window(durable):
    results = [flows.rate_limited.delay("u1") for _ in range(4)]
    statuses = [get_run(r.id).status for r in results]
    assert statuses == ["queued", "queued", "skipped", "skipped"]
    assert get_run(flows.rate_limited.delay("u2").id).status == "queued"
    durable.clock.advance(timedelta(minutes=59))
    assert get_run(flows.rate_limited.delay("u1").id).status == "skipped"  # both still inside the hour
    durable.clock.advance(timedelta(minutes=1, seconds=1))
    assert get_run(flows.rate_limited.delay("u1").id).status == "queued"


def test_throttle__delays_excess_runs_fifo(durable):
    runs = [flows.throttled.delay("red", n) for n in range(3)]
    wakes = [get_run(r.id).wake_at for r in runs]
    assert wakes[0] is None  # the first starts now
    assert wakes[2] - wakes[1] == timedelta(seconds=10)
    assert wakes[1] - durable.clock.now() == timedelta(seconds=10)
    durable.run_until_idle()
    order = list(Run.objects.filter(task_name="f.throttled").order_by("started_at").values_list("id", flat=True))
    assert order == [r.id for r in runs]


def test_celery_rate_string__keeps_celerys_meaning():
    assert flows.celery_rate.rate_limit == "10/m"
    assert flows.celery_rate.durable_rate_limit is None


def test_rate_limit_object__is_not_handed_to_celerys_worker():
    assert flows.rate_limited.rate_limit is None
    assert flows.rate_limited.durable_rate_limit is not None


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"throttle": "10/m"}, "Throttle"),
        ({"singleton": object()}, "Singleton"),
        ({"debounce": 5}, "Debounce"),
        ({"idempotency_key": 3}, "idempotency_key"),
        ({"idempotency_key": "account_id"}, "names no parameter"),
        ({"rate_limit": object()}, "rate_limit"),
        ({"concurrency": object()}, "concurrency"),
    ],
)
def test_bad_flow_option__fails_at_import_naming_task_and_option(options, fragment):
    with pytest.raises(DurableConfigError, match=fragment) as info:

        @durable_task(name="t.bad_flow", **options)
        def bad(user_id):
            return user_id

    assert "t.bad_flow" in str(info.value)


def test_key_callable_that_raises__fails_the_delay_and_stores_nothing(durable):
    from celery_durable import Singleton

    @durable_task(name="t.bad_key_fn", singleton=Singleton(key=lambda user_id: 1 / 0))
    def bad_key_fn(user_id):
        return user_id

    with pytest.raises(DurableConfigError, match=r"t\.bad_key_fn"):
        bad_key_fn.delay(1)
    assert not Run.objects.filter(task_name="t.bad_key_fn").exists()
    assert not Step.objects.exists()


def test_singleton_with_rate_limit__a_skipped_call_does_not_take_the_key(durable):
    from celery_durable import RateLimit, Singleton

    @durable_task(
        name="t.singleton_rate_limited",
        singleton=Singleton(key="account", mode="cancel"),
        rate_limit=RateLimit(limit=1, period=60, key="account"),
    )
    def singleton_rate_limited(account, n):
        return n

    first = singleton_rate_limited.delay("acme", 1)
    skipped = singleton_rate_limited.delay("acme", 2)  # over the rate limit: skipped
    assert get_run(skipped.id).status == RunStatus.SKIPPED
    assert get_run(first.id).status == RunStatus.QUEUED  # not cancelled by a call that never ran
    durable.clock.advance(61)
    third = singleton_rate_limited.delay("acme", 3)  # the key still points at the first run
    assert get_run(first.id).status == RunStatus.CANCELLED
    durable.run_until_idle()
    assert durable.result(third.id) == 3
