"""The replay-only step context, on in-memory histories (no database)."""

import contextlib
from datetime import UTC, datetime

from celery_durable import serialization
from celery_durable.options import RetryPolicy
from celery_durable.runtime.context import current
from celery_durable.runtime.records import StoredStep
from celery_durable.runtime.replaycheck import check_history

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def done(sid, value, kind="run"):
    return StoredStep(sid, kind, "completed", serialization.dumps(value, "t"), 1)


def pending(sid, kind="sleep"):
    return StoredStep(sid, kind, "pending", serialization.dumps({"wake_at": NOW}, "t"), 1)


def check(body, history, *args):
    return check_history(
        run_id="r",
        task_name="t",
        body=body,
        args=list(args),
        kwargs={},
        history=history,
        policy=RetryPolicy(),
        clock=lambda: NOW,
    )


def never(*args):
    raise AssertionError("a step body ran during a replay check")


def test_replayed_steps_return_their_output_and_the_check_stops_at_the_pending_sleep():
    seen = []

    def body():
        step = current()
        seen.append(step.run("a", never))
        step.sleep("nap", 60)
        step.run("b", never)

    verdict = check(body, [done("a", {"x": 1}), pending("nap")])
    assert (verdict.ok, verdict.stopped_at, verdict.replayed) == (True, "nap", 2)
    assert seen == [{"x": 1}]


def test_a_caught_nondeterminism_error_is_still_reported():
    def body():
        with contextlib.suppress(Exception):  # the body swallows NonDeterminismError
            current().sleep("a", 1)
        current().run("b", never)

    verdict = check(body, [done("a", 1), pending("nap")])
    assert (verdict.ok, verdict.cause, verdict.step_id) == (False, "nondeterminism", "a")


def test_patched_is_false_for_an_old_history_and_stops_at_the_edge_for_a_new_one():
    answers = []

    def body():
        answers.append(current().patched("p"))
        current().run("a", never)
        current().sleep("nap", 60)

    assert check(body, [done("a", 1), pending("nap")]).ok
    assert answers == [False]
    verdict = check(body, [])  # a run that never executed a step: the marker would be written
    assert (verdict.ok, verdict.stopped_at, answers) == (True, "#patch:p", [False])
    marker = StoredStep("#patch:p", "patch", "completed", "true", 1)
    assert check(body, [marker, done("a", 1), pending("nap")]).ok
    assert answers == [False, True]


def test_the_body_returning_early_and_an_error_outside_steps_are_failures():
    assert check(lambda: None, [done("a", 1)]).cause == "step-not-reached"

    def body():
        return current().run("a", never)["missing"]

    verdict = check(body, [done("a", 1)])
    assert (verdict.cause, "TypeError" in verdict.detail) == ("error", True)
