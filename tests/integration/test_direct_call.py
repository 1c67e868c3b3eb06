"""Calling a durable task directly (``task(...)``): it runs in-process when it never suspends,
and fails before any step runs when its body suspends."""

import pytest

from celery_durable import DirectCallError, durable_task, step
from celery_durable.models import Run
from celery_durable.runtime.direct import suspending_steps
from tests.testapp.models import BodyRun

SIDE_EFFECTS = []


def charge(order_id):
    SIDE_EFFECTS.append(("charge", order_id))
    return f"charged-{order_id}"


@durable_task(name="t.direct_plain")
def direct_plain(order_id):
    return step.run("charge", charge, order_id)


@durable_task(name="t.direct_sleeps")
def direct_sleeps(order_id):
    step.run("charge", charge, order_id)
    step.sleep("cool-off", 60)
    return "shipped"


def nap():
    step.sleep("nap", 60)  # a suspension the task's own source does not show


@durable_task(name="t.direct_hidden_sleep")
def direct_hidden_sleep(order_id):
    step.run("charge", charge, order_id)
    nap()
    return "shipped"


@pytest.fixture(autouse=True)
def clean():
    SIDE_EFFECTS.clear()
    yield
    SIDE_EFFECTS.clear()


@pytest.mark.django_db
def test_a_task_that_never_suspends__runs_in_process_and_stores_nothing():
    assert direct_plain(7) == "charged-7"
    assert SIDE_EFFECTS == [("charge", 7)]
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_task_whose_body_sleeps__fails_before_any_step_runs():
    with pytest.raises(DirectCallError, match=r"t.direct_sleeps was called directly.*step.sleep at line \d+.*delay"):
        direct_sleeps(7)
    assert SIDE_EFFECTS == []  # the charge did not happen
    assert not Run.objects.exists() and not BodyRun.objects.exists()


@pytest.mark.django_db
def test_a_suspension_hidden_in_a_helper__is_refused_when_reached_with_the_public_error():
    with pytest.raises(DirectCallError, match=r"step\.sleep"):
        direct_hidden_sleep(7)
    assert SIDE_EFFECTS == [("charge", 7)]  # documented limit: the source did not show it


def test_suspending_steps__found_in_the_source_with_their_lines():
    found = suspending_steps(direct_sleeps.run)
    assert [method for method, _line in found] == ["sleep"]
    assert suspending_steps(direct_plain.run) == ()
    assert suspending_steps(direct_hidden_sleep.run) == ()
    assert [m for m, _ in suspending_steps(nap)] == ["sleep"]
