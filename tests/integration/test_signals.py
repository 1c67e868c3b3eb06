from celery_durable import signals
from tests.testapp import tasks


def test_signals__report_the_life_of_a_run(durable):
    seen = []

    def record(signal_name):
        def receiver(sender, run_id, task_name, **kwargs):
            seen.append((signal_name, task_name, kwargs.get("step_id")))

        return receiver

    receivers = {
        name: record(name)
        for name in ("run_started", "run_resumed", "run_completed", "run_failed", "step_failed", "step_completed")
    }
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    try:
        durable.fail_step("t.three_steps", "two", ConnectionError("blip"))
        ok = tasks.three_steps.delay(1)
        durable.run_until_idle()
        bad = tasks.non_retriable.delay()
        durable.run_until_idle()
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    assert durable.result(ok.id) == 7
    assert seen == [
        ("run_started", "t.three_steps", None),
        ("step_completed", "t.three_steps", "one"),
        ("step_failed", "t.three_steps", "two"),
        ("run_resumed", "t.three_steps", None),
        ("step_completed", "t.three_steps", "two"),
        ("step_completed", "t.three_steps", "three"),
        ("run_completed", "t.three_steps", None),
        ("run_started", "t.non_retriable", None),
        ("step_completed", "t.non_retriable", "ok"),
        ("step_failed", "t.non_retriable", "boom"),
        ("run_failed", "t.non_retriable", "boom"),
    ]
    assert bad.id


def test_failing_receiver__does_not_break_the_run(durable):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.run_completed.connect(broken)
    try:
        run = tasks.add.delay(1, 2)
        durable.run_until_idle()
    finally:
        signals.run_completed.disconnect(broken)
    assert durable.result(run.id) == 3


def test_lease_at_risk__is_sent_for_a_run_whose_lease_went_more_than_half_a_lease_without_extension(durable):
    """The heartbeat's check after an extension: a stalled process is reported, a punctual one is not."""
    import os
    import time

    from celery_durable.conf import get_settings
    from celery_durable.integration.services import Heartbeat

    got = []

    def receiver(sender, run_id, gap, pid, **kwargs):
        got.append((run_id, round(gap), pid))

    signals.lease_at_risk.connect(receiver)
    try:
        half = get_settings().LEASE_SECONDS / 2
        now = time.monotonic()
        extended = {"stalled": now - half - 7, "punctual": now - half + 5, "finished": now}
        Heartbeat("worker-a", set())._check_gaps(["stalled", "punctual"], extended)
    finally:
        signals.lease_at_risk.disconnect(receiver)
    assert got == [("stalled", round(half + 7), os.getpid())]
    assert set(extended) == {"stalled", "punctual"}  # a run no longer active is forgotten
    assert min(extended.values()) >= now  # both count from this extension now
