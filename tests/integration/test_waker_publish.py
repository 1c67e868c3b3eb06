"""The waker's messages for runs due soon carry the countdown left at publish time."""

import re
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


def test_tick__publishes_a_run_only_within_the_lead_and_sleeps_until_just_before_it(durable, real_publish):
    """A run due in 0.5 s stays asleep (no 0.5 s ETA in a worker); the loop wakes 0.1 s before it."""
    from celery_durable.engine.services import PUBLISH_LEAD, next_tick_in
    from celery_durable.integration.services import tick

    run = flows.sleepy.delay(10)
    durable.run_until_idle(advance_clock=False)
    wake_at = get_run(run.id).wake_at
    durable.clock.advance(9.5)  # due in 0.5 s: within WAKER_INTERVAL (1 s), beyond the lead
    report = tick(current_app)
    assert (report.woken, report.next_wake) == (0, wake_at)
    assert get_run(run.id).status == RunStatus.SLEEPING and real_publish.messages == []
    assert abs(next_tick_in(report, elapsed=0.0, waker_interval=1.0) - (0.5 - PUBLISH_LEAD)) < 1e-6

    durable.clock.advance(0.5 - PUBLISH_LEAD / 2)  # the loop woke just before the wake time
    report = tick(current_app)
    assert report.woken == 1 and get_run(run.id).status == RunStatus.QUEUED
    ((task_id, headers),) = real_publish.messages
    assert task_id == run.id and headers["eta"] is not None  # a countdown of at most the lead
    # More runs may come due right after: the next tick is a lead after this one started.
    assert next_tick_in(report, elapsed=0.02, waker_interval=1.0) == PUBLISH_LEAD - 0.02


def test_next_tick_in__an_idle_tick_waits_the_interval_from_its_start(durable):
    from celery_durable.engine.services import TickReport, next_tick_in

    assert next_tick_in(TickReport(), elapsed=0.3, waker_interval=1.0) == 0.7
    assert next_tick_in(TickReport(), elapsed=2.0, waker_interval=1.0) == 0.0  # a tick longer than the interval
    soon = TickReport(next_wake=durable.clock.now() + timedelta(seconds=0.05))
    assert next_tick_in(soon, elapsed=0.0, waker_interval=1.0) == 0.0  # within the lead already


def test_tick__that_only_wakes_runs_asks_nothing_of_the_sweeper_reaper_timeouts_or_batches(durable, real_publish):
    """While runs come due, the loop ticks every PUBLISH_LEAD: the other services run only when the probe saw work."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from celery_durable.integration.services import tick

    run = flows.sleepy.delay(10)
    durable.run_until_idle(advance_clock=False)
    durable.clock.advance(10)
    with CaptureQueriesContext(connection) as captured:
        report = tick(current_app, backstops=False)
    assert report.woken == 1 and get_run(run.id).status == RunStatus.QUEUED
    statements = [query["sql"] for query in captured]
    (probe,) = [sql for sql in statements if "celery_durable_batchitem" in sql]  # one probe asks for all
    assert all(word in probe for word in ("lease_expires_at", "finish_by", "start_by", "wake_at"))
    others = re.compile(r"lease_expires_at|finish_by|start_by|celery_durable_batchitem|published_at\W{0,2} <")
    assert not [sql for sql in statements if sql != probe and others.search(sql)]
