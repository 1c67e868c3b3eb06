"""The slot store's transitions, each pinned by what it writes (found by mutation testing)."""

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_durable import get_run
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from celery_durable.store import recovery, slots
from tests.testapp import flows


def test_backlog_time__strictly_increases_within_a_process_when_the_clock_stands_still(durable):
    # The fake clock does not move: equal priorities must still keep call order.
    times = [slots.backlog_time(0) for _ in range(3)]
    assert times[0] < times[1] < times[2]
    assert slots.backlog_time(60) < times[0] - timedelta(seconds=59)  # a head start of 60 s


def test_release__hands_a_one_key_slot_to_the_backlog_head_without_touching_the_slot_row(durable):
    first = flows.per_user.delay(7)
    second = flows.per_user.delay(7)
    assert get_run(second.id).status == RunStatus.PENDING
    Run.objects.filter(id=first.id).update(status=RunStatus.COMPLETED)  # as its completion does
    with CaptureQueriesContext(connection) as captured:
        handed = slots.release(first.id)
    assert [message.run_id for message in handed] == [second.id]
    slot_writes = [q["sql"] for q in captured.captured_queries if "celery_durable_slot" in q["sql"].split("WHERE")[0]]
    assert not [sql for sql in slot_writes if sql.lstrip().upper().startswith("UPDATE")]
    assert Slot.objects.get(key="f.per_user:user_id:7").in_use == 1
    head = get_run(second.id)
    assert (head.status, head.holds_slots) == (RunStatus.QUEUED, True)


def test_a_run_admitted_at_once__is_marked_published_so_the_sweeper_can_republish_it(durable):
    run = flows.per_user.delay(8)
    assert get_run(run.id).published_at is not None
    assert run.id in [message.run_id for message in recovery.take_unpublished(-1, 10)]
