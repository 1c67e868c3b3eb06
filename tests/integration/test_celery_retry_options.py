"""A converted Celery task keeps its retry policy: autoretry_for, max_retries, retry_kwargs, self.retry()."""

from datetime import timedelta

import pytest

from celery_durable import DurableConfigError, durable_task, step
from celery_durable.models import Run, Step

calls: dict[str, int] = {}


def flaky(name, failures, error):
    """Raise ``error`` the first ``failures`` times ``name`` is called."""
    calls[name] = calls.get(name, 0) + 1
    if calls[name] <= failures:
        raise error
    return calls[name]


@pytest.fixture(autouse=True)
def reset_calls():
    calls.clear()


@durable_task(name="t.converted", autoretry_for=(ConnectionError,), retry_backoff=2, retry_jitter=False, max_retries=3)
def converted(failures):
    """A plain Celery task's body, unchanged: no steps at all."""
    return flaky("converted", failures, ConnectionError("partner down"))


@durable_task(name="t.converted_wrong_error", autoretry_for=(ConnectionError,), max_retries=3)
def converted_wrong_error():
    return flaky("wrong", 5, ValueError("bad input"))


@durable_task(name="t.converted_steps", autoretry_for=(ConnectionError,), retry_kwargs={"countdown": 7})
def converted_steps(kind):
    first = step.run("fetch", flaky, "fetch", 1, ConnectionError("down"))
    step.run("parse", flaky, "parse", 1, ValueError("bad") if kind == "value" else KeyError("k"))
    return first


@durable_task(name="t.self_retry", bind=True, max_retries=2)
def self_retry(self, failures, name="self_retry"):
    try:
        return flaky(name, failures, TimeoutError("429"))
    except TimeoutError as exc:
        raise self.retry(exc=exc, countdown=30) from exc


def retry_delays(durable, run_id):
    """Run until idle, recording how far each failed attempt put the run's wake time."""
    delays = []
    while True:
        if durable.run_next() is None:
            break
        run = Run.objects.get(id=run_id)
        if run.wake_at is not None:
            delays.append((run.wake_at - durable.clock.now()).total_seconds())
            durable.clock.current = run.wake_at
            durable.wake_due()
    return delays


def test_autoretry_for__retries_a_body_without_steps_with_celerys_backoff(durable):
    result = converted.delay(2)
    assert retry_delays(durable, result.id) == [2.0, 4.0]  # retry_backoff=2: 2 s, then 4 s
    assert durable.result(result.id) == 3
    body = Step.objects.get(run_id=result.id)
    assert (body.step_id, body.attempts) == ("#body", 2)


def test_autoretry_for__gives_up_after_max_retries(durable):
    result = converted.delay(10)
    durable.run_until_idle()
    assert Run.objects.get(id=result.id).status == "failed"
    assert calls["converted"] == 4  # the first try and max_retries=3 retries


def test_exception_not_in_autoretry_for__fails_at_once(durable):
    result = converted_wrong_error.delay()
    durable.run_until_idle()
    assert Run.objects.get(id=result.id).status == "failed"
    assert calls["wrong"] == 1


@pytest.mark.parametrize("kind, parse_calls, status", [("value", 1, "failed"), ("key", 1, "failed")])
def test_autoretry_for__applies_to_steps_with_retry_kwargs_countdown(durable, kind, parse_calls, status):
    result = converted_steps.delay(kind)
    delays = retry_delays(durable, result.id)
    assert delays[0] == 7.0  # the fetch step: a ConnectionError, retried after countdown=7
    assert calls["fetch"] == 2
    assert calls["parse"] == parse_calls  # ValueError / KeyError are not in autoretry_for
    assert Run.objects.get(id=result.id).status == status


def test_self_retry_outside_a_step__retries_the_body_after_its_countdown(durable):
    result = self_retry.delay(2)
    assert retry_delays(durable, result.id) == [30.0, 30.0]
    assert durable.result(result.id) == 3
    exhausted = self_retry.delay(5, "exhausted")
    durable.run_until_idle()
    assert Run.objects.get(id=exhausted.id).status == "failed"
    assert calls["exhausted"] == 3  # the first try and max_retries=2 retries


def test_celerys_autoretry_wrapper__is_not_installed():
    assert not hasattr(converted, "_orig_run")  # the run is retried by its policy, not re-sent
    assert converted.retry_policy().retries == 3
    assert converted.retry_policy().retry_backoff == 2


def test_autoretry_for_without_retry_backoff__keeps_celerys_fixed_delay():
    @durable_task(name="t.fixed_delay", autoretry_for=(OSError,), default_retry_delay=timedelta(seconds=15))
    def fixed_delay():
        return None

    policy = fixed_delay.retry_policy()
    assert (policy.retry_backoff, policy.delay(1), policy.delay(5)) == (False, 15.0, 15.0)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"autoretry_for": ValueError}, "autoretry_for"),
        ({"autoretry_for": ("ValueError",)}, "autoretry_for"),
        ({"max_retries": 3, "retries": 2}, "max_retries"),
        ({"max_retries": None}, "retry forever"),
        ({"retry_kwargs": {"exc": 1}}, "retry_kwargs"),
    ],
)
def test_bad_celery_retry_option__fails_at_import_naming_the_task(options, fragment):
    with pytest.raises(DurableConfigError, match=fragment) as info:

        @durable_task(name="t.bad_retry", **options)
        def bad_retry():
            return None

    assert "t.bad_retry" in str(info.value)


def test_priority_option_does_not_trigger_celerys_deprecation_warning():
    import warnings

    from celery import Celery

    from celery_durable import DurableTask

    app = Celery("priority-warning", set_as_current=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @app.task(base=DurableTask, priority=30, shared=False)
        def prioritized() -> None: ...

        prioritized.bind(app)  # Celery warns here about a 'priority' in the task class's dict
        prioritized.name  # noqa: B018  (forces the lazy task to bind)
    assert [str(w.message) for w in caught if "priority" in str(w.message)] == []
    assert prioritized.durable_spec.priority == 30
