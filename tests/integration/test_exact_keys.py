"""Ids and keys compare byte for byte on every database (MySQL's default collations do not)."""

from celery_durable import Concurrency, durable_task, send_event, step
from celery_durable.models import Event, Slot


@durable_task(name="t.exact_keys", concurrency=Concurrency(limit=1, key="user"))
def exact_keys(user):
    return [step.run("Fetch", lambda: "upper"), step.run("fetch", lambda: "lower"), step.run("fetch ", lambda: "space")]


def test_event_ids_differing_in_case_or_trailing_spaces__are_different_events(durable):
    ids = ["Order-1", "order-1", "order-1 "]
    for event_id in ids:
        send_event("shop.paid", {"id": event_id}, id=event_id)
    assert sorted(Event.objects.values_list("event_id", flat=True)) == sorted(ids)


def test_step_ids_and_concurrency_keys_differing_in_case__are_different(durable):
    first, second = exact_keys.delay("Alice"), exact_keys.delay("alice")
    assert Slot.objects.count() == 2  # two users, two slots: both admitted at once
    durable.run_until_idle()
    assert durable.result(first.id) == durable.result(second.id) == ["upper", "lower", "space"]
