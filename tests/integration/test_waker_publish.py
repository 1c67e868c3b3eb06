"""The waker's messages for runs due soon carry the countdown left at publish time."""

from datetime import timedelta

from celery import current_app

from celery_durable import get_run
from celery_durable.integration import publish as publish_module
from celery_durable.states import RunStatus
from celery_durable.store.recovery import take_due
from tests.testapp import flows


def published_countdowns(monkeypatch, messages):
    sent = []
    monkeypatch.setattr(publish_module, "dispatch_override", None)  # the real publish path
    monkeypatch.setattr(publish_module.Task, "apply_async", lambda task, **kw: sent.append(kw.get("countdown")))
    for message in messages:
        assert publish_module.publish(current_app, message)
    return sent


def test_countdown__is_what_is_left_when_the_message_goes_out(durable, monkeypatch):
    run = flows.sleepy.delay(10)
    durable.run_until_idle(advance_clock=False)
    assert get_run(run.id).status == RunStatus.SLEEPING
    durable.clock.advance(9.2)  # due in 0.8 s: within the waker's 1 s horizon
    messages = take_due(10, horizon=1.0)
    assert [n.countdown for n in messages] == [0.8]
    durable.clock.advance(0.5)  # publishing a large batch took this long
    (countdown,) = published_countdowns(monkeypatch, messages)
    assert abs(countdown - 0.3) < 1e-6  # not 0.8: the message would be 0.5 s late


def test_countdown__none_once_the_wake_time_has_passed(durable, monkeypatch):
    run = flows.sleepy.delay(10)
    durable.run_until_idle(advance_clock=False)
    durable.clock.advance(9.5)
    messages = take_due(10, horizon=1.0)
    durable.clock.advance(timedelta(seconds=1))
    assert published_countdowns(monkeypatch, messages) == [None]
    assert get_run(run.id).status == RunStatus.QUEUED
