"""step.chain: an existing Celery chain wrapped as durable steps, link by link."""

from celery import chain, group

from celery_durable import ChildRunFailed, durable_task, step
from celery_durable.models import Run
from tests.testapp import tasks
from tests.testapp.observe_tasks import broken


@durable_task(name="t.wrapped_chain")
def wrapped_chain(x):
    # Before: chain(plain.s(x), plain.s(), plain.si(10)).delay()
    return step.chain("links", chain(tasks.plain.s(x), tasks.plain.s(), tasks.plain.si(10), tasks.plain.s()))


@durable_task(name="t.wrapped_list")
def wrapped_list(x):
    first = step.chain("links", [tasks.plain.s(x), tasks.plain.s()])
    return step.run("after", lambda: first + 1)


@durable_task(name="t.wrapped_failing")
def wrapped_failing():
    try:
        step.chain("links", chain(tasks.plain.s(1), broken.si("partner down"), tasks.plain.s()))
    except ChildRunFailed as exc:
        return str(exc)
    return "unreachable"


@durable_task(name="t.wrapped_group")
def wrapped_group():
    return step.chain("links", chain(tasks.plain.s(1), group(tasks.plain.s(), tasks.plain.s())))


def test_chain__runs_each_link_as_a_child_with_the_previous_result(durable):
    result = wrapped_chain.delay(3)
    durable.run_until_idle()
    assert durable.result(result.id) == 40  # 3*2=6, 6*2=12, si(10): 10*2=20, 20*2=40
    children = Run.objects.filter(parent_id=result.id).order_by("parent_step")
    assert [(c.parent_step, c.task_name, c.status) for c in children] == [
        (f"links.{n}", "t.plain", "completed") for n in (1, 2, 3, 4)
    ]
    assert [c.args_value for c in children] == [[3], [6], [10], [20]]


def test_list_of_signatures__is_a_chain_too_and_later_steps_follow(durable):
    result = wrapped_list.delay(5)
    durable.run_until_idle()
    assert durable.result(result.id) == 21


def test_a_failing_link__raises_child_run_failed_and_stops_the_chain(durable):
    result = wrapped_failing.delay()
    durable.run_until_idle()
    assert "partner down" in durable.result(result.id)
    assert Run.objects.filter(parent_id=result.id).count() == 2  # the third link never started


def test_a_group_inside__is_refused_with_a_named_error(durable):
    result = wrapped_group.delay()
    durable.run_until_idle()
    run = Run.objects.get(id=result.id)
    assert run.status == "failed"
    assert "use step.gather" in run.error_value["message"]
    assert run.error_value["type"] == "DurableConfigError"
    assert not Run.objects.filter(parent_id=result.id).exists()  # refused before any link ran
