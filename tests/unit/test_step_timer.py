"""StepTimer: the alarm in the main thread, the after-the-fact check elsewhere, other timers kept."""

import signal
import threading
import time

import pytest

from celery_durable.exceptions import StepTimeout, _StepFailed
from celery_durable.options import RetryPolicy
from celery_durable.runtime.context import activate, deactivate
from celery_durable.runtime.memory import ephemeral_context
from celery_durable.runtime.timeouts import StepTimer, can_interrupt

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX timers")


def test_alarm__interrupts_the_body_in_the_main_thread():
    assert can_interrupt()
    handler, (timer, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    with pytest.raises(StepTimeout) as raised, StepTimer("s", 0.05):
        time.sleep(30)
    assert (raised.value.step_id, raised.value.seconds) == ("s", 0.05)
    # Disarmed: whatever ran before (pytest-timeout's own alarm, say) is back.
    assert signal.getsignal(signal.SIGALRM) is handler
    assert (signal.getitimer(signal.ITIMER_REAL)[0] > 0) == (timer > 0)


def test_timer__restores_the_previous_handler_and_timer():
    fired = []

    def previous(signum, frame):
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, previous)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        with StepTimer("s", 5):
            pass
        assert signal.getsignal(signal.SIGALRM) is previous
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < left <= 30  # the other timer still runs
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == []


def test_outside_the_main_thread__the_step_is_checked_when_it_returns():
    outcome = {}

    def in_thread():
        ctx = ephemeral_context("t", RetryPolicy(retries=0))
        token = activate(ctx)
        try:
            assert not can_interrupt()
            ctx.run("slow", time.sleep, 0.2, timeout=0.05)
        except _StepFailed as failed:
            outcome["error"] = failed.error
        finally:
            deactivate(token)
        outcome["stored"] = dict(ctx._writer.stored)  # type: ignore[attr-defined]

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(30)
    assert isinstance(outcome["error"], StepTimeout)
    assert outcome["stored"] == {}  # the late output was not checkpointed


def test_a_fast_step_with_a_timeout__is_kept():
    ctx = ephemeral_context("t", RetryPolicy(retries=0))
    token = activate(ctx)
    try:
        handler = signal.getsignal(signal.SIGALRM)
        assert ctx.run("fast", lambda: 7, timeout=5) == 7
        assert signal.getsignal(signal.SIGALRM) is handler
    finally:
        deactivate(token)
