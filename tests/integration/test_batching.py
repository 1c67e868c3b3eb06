"""Batching (``Batch``): calls recorded at ``.delay()``, one run per batch, formed by size or by time."""

import html
from datetime import timedelta

import pytest
from celery import current_app
from django.urls import reverse

from celery_durable import (
    Batch,
    Concurrency,
    DurableConfigError,
    RunCancelled,
    RunNotFound,
    batch_run,
    cancel,
    durable_task,
    get_run,
    serialization,
)
from celery_durable.engine import services
from celery_durable.integration.registry import CeleryPublisher
from celery_durable.models import BatchItem, Run
from celery_durable.states import RunStatus
from celery_durable.store import batches, prune, recovery
from tests.integration.race_tools import before_statement, concurrently, update_of
from tests.testapp import batch_tasks
from tests.testapp.models import BodyRun


def make_call(durable, **kwargs):
    """One call of ``b.collect``, a microsecond after the previous one (calls keep their order)."""
    durable.clock.advance(timedelta(microseconds=1))
    return batch_tasks.collect.delay(**kwargs)


def items_of(run_id):
    return list(BatchItem.objects.filter(run_id=run_id).order_by("created_at").values_list("id", flat=True))


def assert_each_call_in_at_most_one_batch(task_name):
    """Every batch run of the task has calls, and the calls of all its runs add up (no call twice)."""
    run_ids = set(Run.objects.filter(task_name=task_name).values_list("id", flat=True))
    assigned = BatchItem.objects.filter(task_name=task_name, run__isnull=False)
    assert set(assigned.values_list("run_id", flat=True)) == run_ids  # no batch run without calls
    assert assigned.count() == len(set(assigned.values_list("id", flat=True)))


def test_size__the_call_that_fills_the_batch_forms_one_run_of_all_calls(durable, django_capture_on_commit_callbacks):
    calls = [make_call(durable, account="acme", n=n) for n in (1, 2)]
    assert not Run.objects.filter(task_name="b.collect").exists()
    assert batch_run(calls[0].id) is None  # still forming
    with django_capture_on_commit_callbacks(execute=True):
        calls.append(make_call(durable, account="acme", n=3))
    run = Run.objects.get(task_name="b.collect")
    assert items_of(run.id) == [call.id for call in calls]
    assert run.kwargs_value == {"items": [{"account": "acme", "n": n} for n in (1, 2, 3)]}
    assert durable.published[-1].run_id == run.id
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == 6
    assert sorted(BodyRun.objects.filter(run_id=run.id).values_list("step", flat=True)) == [
        "item:1",
        "item:2",
        "item:3",
    ]
    for call in calls:
        assert batch_run(call.id).id == run.id
        assert current_app.AsyncResult(call.id).get(timeout=5) == 6


def test_size__keys_batch_apart_and_extra_calls_start_the_next_batch(durable):
    for n in range(4):
        make_call(durable, account="acme", n=n)
    make_call(durable, account="zeta", n=9)
    formed = Run.objects.get(task_name="b.collect")
    assert [item["n"] for item in formed.kwargs_value["items"]] == [0, 1, 2]
    waiting = BatchItem.objects.filter(run__isnull=True).order_by("created_at")
    assert [item.arguments_value["n"] for item in waiting] == [3, 9]


def test_time__the_tick_forms_a_batch_once_its_first_call_is_wait_old(durable):
    first = make_call(durable, account="acme", n=1)
    durable.clock.advance(30)
    second = make_call(durable, account="acme", n=2)
    publisher = CeleryPublisher()
    assert services.tick(publisher).batches == 0
    durable.clock.advance(29)
    assert services.tick(publisher).batches == 0
    assert batches.due_keys(10) == []
    assert not Run.objects.filter(task_name="b.collect").exists()
    durable.clock.advance(1)
    assert [key[0] for key in batches.due_keys(10)] == ["b.collect"]
    assert services.tick(publisher).batches == 1
    assert services.tick(publisher).batches == 0  # exactly once
    run = batch_run(second.id)
    assert items_of(run.id) == [first.id, second.id]
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == 3


def test_time__the_test_runner_forms_due_batches(durable):
    call = make_call(durable, account="acme", n=5)
    durable.run_until_idle()
    assert durable.result(batch_run(call.id).id) == 5


def test_form__a_call_assigned_by_a_concurrent_forming_never_joins_a_second_batch(durable):
    for n in range(2):
        make_call(durable, account="acme", n=n)
    key = BatchItem.objects.values_list("batch_key", flat=True).first()
    other = lambda: batches.form("b.collect", key, 3, full=False)  # noqa: E731
    with before_statement(update_of(BatchItem, "run_id"), lambda: concurrently(other)) as fired:
        mine = batches.form("b.collect", key, 3, full=False)
    assert fired
    assert_each_call_in_at_most_one_batch("b.collect")
    if mine is not None:
        assert set(items_of(mine.run_id)) == set(BatchItem.objects.values_list("id", flat=True))
    # Whatever the interleaving, every call is in one batch once the tick has run.
    durable.run_until_idle()
    assert BatchItem.objects.filter(run__isnull=True).count() == 0
    assert_each_call_in_at_most_one_batch("b.collect")


def test_form__full_forms_nothing_when_fewer_than_max_size_calls_can_be_taken(durable):
    make_call(durable, account="acme", n=1)
    key = BatchItem.objects.values_list("batch_key", flat=True).get()
    assert batches.form("b.collect", key, 3, full=True) is None
    assert not Run.objects.filter(task_name="b.collect").exists()


def test_lost_message__the_sweeper_republishes_a_formed_batch(durable, settings):
    calls = [make_call(durable, account="acme", n=n) for n in range(3)]
    run_id = batch_run(calls[0].id).id
    durable.published.clear()  # as if the process died between commit and publish
    after = settings.CELERY_DURABLE.get("REPUBLISH_AFTER_SECONDS", 60)
    durable.clock.advance(after + 1)
    lost = recovery.take_unpublished(after, 100)
    assert [message.run_id for message in lost] == [run_id]
    assert lost[0].kwargs == Run.objects.get(id=run_id).kwargs


def test_call_id__a_given_task_id_is_the_call_id_and_a_repeat_records_nothing(durable):
    first = batch_tasks.collect.apply_async(kwargs={"account": "acme", "n": 1}, task_id="call-1")
    again = batch_tasks.collect.apply_async(kwargs={"account": "acme", "n": 1}, task_id="call-1")
    assert first.id == again.id == "call-1"
    assert BatchItem.objects.count() == 1


def test_failure__every_call_gets_the_batch_error(durable):
    calls = [batch_tasks.failing.delay(x=n) for n in range(2)]
    durable.run_until_idle()
    run = batch_run(calls[0].id)
    assert run.status == RunStatus.FAILED
    for call in calls:
        with pytest.raises(ValueError, match="2 items refused"):
            current_app.AsyncResult(call.id).get(timeout=5)


def test_bind__the_task_comes_first(durable):
    batch_tasks.bound.delay(x=1)
    durable.clock.advance(timedelta(microseconds=1))
    call = batch_tasks.bound.delay(x=2)
    durable.run_until_idle()
    assert durable.result(batch_run(call.id).id) == ["b.bound", [1, 2]]


def test_bad_calls__are_refused_and_record_nothing(durable):
    with pytest.raises(DurableConfigError, match="keyword arguments only"):
        batch_tasks.collect.delay("acme", 1)
    with pytest.raises(DurableConfigError, match="countdown"):
        batch_tasks.collect.apply_async(kwargs={"account": "acme", "n": 1}, countdown=5)
    with pytest.raises(DurableConfigError, match="key 'account' is missing"):
        batch_tasks.collect.delay(n=1)
    assert BatchItem.objects.count() == 0
    with pytest.raises(RunNotFound):
        batch_run("no-such-call")


@pytest.mark.parametrize(
    ("options", "body", "message"),
    [
        ({"batch": {"max_size": 2}}, lambda items: None, "must be Batch"),
        ({"batch": Batch(max_size=2, wait=1)}, lambda account: None, "one parameter, 'items'"),
        ({"batch": Batch(max_size=2, wait=1)}, lambda items, more: None, "one parameter, 'items'"),
        (
            {"batch": Batch(max_size=2, wait=1), "concurrency": Concurrency(limit=1)},
            lambda items: None,
            "cannot be combined with concurrency",
        ),
    ],
)
def test_declaration__errors_name_the_task(options, body, message):
    with pytest.raises(DurableConfigError, match=message):
        durable_task(name="b.invalid", **options)(body)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_size": 0, "wait": 1}, "Batch.max_size"),
        ({"max_size": 2, "wait": -1}, "Batch.wait"),
        ({"max_size": 2, "wait": 1, "key": "not a path"}, "Batch.key"),
    ],
)
def test_batch_option__validates_its_fields(kwargs, message):
    with pytest.raises(DurableConfigError, match=message):
        Batch(**kwargs)


def test_get_run__of_the_batch_lists_its_calls(durable):
    calls = [make_call(durable, account="acme", n=n) for n in range(3)]
    run = get_run(batch_run(calls[2].id).id)
    assert list(run.batch_items.order_by("created_at").values_list("id", flat=True)) == [c.id for c in calls]
    assert timedelta(0) <= run.created_at - BatchItem.objects.get(id=calls[0].id).created_at


def test_admin__the_run_page_lists_the_calls_and_a_call_id_leads_to_its_batch(durable, admin_client):
    calls = [make_call(durable, account="acme", n=n) for n in range(3)]
    forming = make_call(durable, account="acme", n=99)
    run_id = batch_run(calls[0].id).id
    page = admin_client.get(reverse("admin:celery_durable_run_change", args=[run_id]))
    assert page.status_code == 200
    body = html.unescape(page.content.decode())
    assert "Batched calls" in body and "3 calls" in body
    for call in calls:
        assert call.id in body
    assert '"n": 2' in body
    # A call's id: its page is its batch run's page, and the search finds the batch.
    redirect = admin_client.get(reverse("admin:celery_durable_run_change", args=[calls[1].id]))
    assert redirect.status_code == 302
    assert redirect["Location"] == reverse("admin:celery_durable_run_change", args=[run_id])
    listed = html.unescape(
        admin_client.get(reverse("admin:celery_durable_run_changelist"), {"q": calls[1].id}).content.decode()
    )
    assert run_id in listed
    # A call whose batch still forms: a 404 that says so.
    waiting = admin_client.get(reverse("admin:celery_durable_run_change", args=[forming.id]))
    assert waiting.status_code == 404


def test_options__the_batch_run_has_the_publish_options_of_its_first_call(durable):
    first = batch_tasks.bound.apply_async(kwargs={"x": 1}, queue="bulk")
    durable.clock.advance(timedelta(microseconds=1))
    batch_tasks.bound.apply_async(kwargs={"x": 2}, queue="other")
    run = batch_run(first.id)
    assert serialization.loads(run.options)["queue"] == "bulk"


def test_prune__deletes_a_pruned_batch_runs_calls_and_keeps_forming_ones(durable):
    calls = [make_call(durable, account="acme", n=n) for n in range(3)]
    forming = make_call(durable, account="acme", n=9)
    durable.run_until_idle(advance_clock=False)
    run_id = batch_run(calls[0].id).id
    durable.clock.advance(timedelta(days=31))
    assert prune.delete_batch([run_id], timedelta(days=30)) == 1
    assert list(BatchItem.objects.values_list("id", flat=True)) == [forming.id]


def test_results__a_redelivery_of_the_ended_batch_run_stores_the_calls_results_again(durable, deliver):
    from django_celery_results.models import TaskResult

    calls = [make_call(durable, account="acme", n=n) for n in range(3)]
    run_id = batch_run(calls[0].id).id
    assert deliver(run_id) == 3
    TaskResult.objects.filter(task_id__in=[c.id for c in calls]).delete()  # the worker died before storing them
    assert deliver(run_id) == 3  # the broker redelivers the message of the ended run
    assert [current_app.AsyncResult(c.id).get(timeout=5) for c in calls] == [3, 3, 3]


def test_results__cancelling_a_batch_run_cancels_every_call(durable):
    calls = [make_call(durable, account="acme", n=n) for n in range(3)]
    cancel(batch_run(calls[0].id).id, "not today")
    for call in calls:
        with pytest.raises(RunCancelled, match="not today"):
            current_app.AsyncResult(call.id).get(timeout=5)


def test_keys__compare_byte_for_byte(durable):
    for account in ("Alice", "alice", "Alice "):
        make_call(durable, account=account, n=1)
    assert BatchItem.objects.values("batch_key").distinct().count() == 3
    for account in ("Alice", "alice", "Alice "):
        make_call(durable, account=account, n=2)
        make_call(durable, account=account, n=3)
    runs = Run.objects.filter(task_name="b.collect")
    assert sorted(run.kwargs_value["items"][0]["account"] for run in runs) == ["Alice", "Alice ", "alice"]


def test_explain__a_forming_call_names_its_batch_then_the_formed_run(durable):
    from celery_durable import explain

    first = make_call(durable, account="acme", n=1)
    durable.clock.advance(timedelta(seconds=5))
    second = make_call(durable, account="acme", n=2)
    why = explain(second.id)
    assert (why.gate, why.status, why.data["waiting"], why.data["max_size"]) == ("batch", "forming", 2, 3)
    # The batch forms when the first call is 60 s old (Batch(wait=60)), or when a third call arrives.
    assert why.estimated_start == BatchItem.objects.get(id=first.id).due_at
    assert "2 of 3 calls wait" in str(why)
    make_call(durable, account="acme", n=3)
    formed = explain(second.id)
    assert formed.run_id == batch_run(second.id).id and formed.gate != "batch"
    with pytest.raises(RunNotFound):
        explain("no-such-call")
