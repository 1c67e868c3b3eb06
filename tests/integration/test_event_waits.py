"""send_event's resume of many waits: by the condition that found them, or by their ids.

When every run waiting for the name takes the event, the two UPDATEs select their rows by
the condition that found them (no run id in any statement); ``resolve_every_wait`` changes
nothing when that condition now selects other rows than the waits read, and the id path
then resumes exactly the waits read.
"""

from datetime import UTC, datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_durable import durable_task, send_event, serialization, step
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus, StepStatus
from celery_durable.store import event_waits
from tests.integration.race_tools import snapshot


@durable_task(name="t.waits_for_ping")
def waits_for_ping(n):
    return [n, step.wait_for_event("ping", "bulk.ping", timeout=3600).data["k"]]


def waiting(count, durable):
    ids = [waits_for_ping.delay(n).id for n in range(count)]
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.filter(id__in=ids, status=RunStatus.WAITING).count() == count
    return ids


def test_every_run_takes_the_event__no_statement_names_a_run_id(durable):
    ids = waiting(5, durable)
    with CaptureQueriesContext(connection) as captured:
        send_event("bulk.ping", {"k": 1})
    assert not [query["sql"] for query in captured if any(run_id in query["sql"] for run_id in ids)]
    assert Run.objects.filter(id__in=ids, status=RunStatus.QUEUED).count() == 5
    durable.run_until_idle(advance_clock=False)
    assert [durable.result(run_id) for run_id in ids] == [[n, 1] for n in range(5)]


def test_a_run_that_began_waiting_since_the_waits_were_read__nothing_changes(durable):
    ids = waiting(3, durable)
    read = event_waits.pending_waits("bulk.ping")
    assert sorted(wait.run_id for wait in read) == sorted(ids)
    before = snapshot()
    event = {"name": "bulk.ping", "data": {"k": 2}, "id": "e1", "received_at": durable.clock.now()}
    # The two UPDATEs would touch three steps and three runs for two waits: both are rolled back.
    assert event_waits.resolve_every_wait("bulk.ping", read[:2], event) is None
    assert snapshot() == before


def test_a_wait_output_in_another_layout__nothing_changes(durable):
    first, other = waiting(2, durable)
    reordered = serialization.dumps({"event": None, "name": "bulk.ping"}, "s")  # the event first: not spliced
    Step.objects.filter(run_id=other, step_id="ping").update(output=reordered)
    read = event_waits.pending_waits("bulk.ping")
    before = snapshot()
    event = {"name": "bulk.ping", "data": {"k": 4}, "id": "e3", "received_at": durable.clock.now()}
    # One step of two would take the event: its run would resume without it.
    assert event_waits.resolve_every_wait("bulk.ping", read, event) is None
    assert snapshot() == before
    send_event("bulk.ping", {"k": 4})  # by the ids: the other layout is written from its state
    durable.run_until_idle(advance_clock=False)
    assert [durable.result(first), durable.result(other)] == [[0, 4], [1, 4]]


def test_a_run_with_two_pending_waits_for_the_name__resumed_once(durable):
    (run_id,) = waiting(1, durable)
    wait = Step.objects.get(run_id=run_id, step_id="ping")
    Step.objects.create(
        run_id=run_id,
        step_id="ping#2",
        kind="wait",
        status=StepStatus.PENDING,
        output=wait.output,
        started_at=wait.started_at,
        finished_at=wait.finished_at,
    )
    read = event_waits.pending_waits("bulk.ping")
    assert len(read) == 2
    before = snapshot()
    event = {"name": "bulk.ping", "data": {"k": 3}, "id": "e2", "received_at": durable.clock.now()}
    assert event_waits.resolve_every_wait("bulk.ping", read, event) is None  # two steps, but one run
    assert snapshot() == before
    messages = event_waits.resolve_waits(read, event)
    assert [message.run_id for message in messages] == [run_id]
    assert set(Step.objects.filter(run_id=run_id).values_list("status", flat=True)) == {StepStatus.COMPLETED}


@durable_task(name="t.waits_for_a_date")
def waits_for_a_date(at):
    event = step.wait_for_event("dated", "bulk.dated", match={"at": at}, timeout=3600)
    return event.data["n"]


def test_a_match_on_a_date__compared_as_a_date_not_as_its_json(durable):
    at = datetime(2026, 12, 7, 5, 30, tzinfo=UTC)
    matching = waits_for_a_date.delay(at).id
    other = waits_for_a_date.delay(at.replace(hour=6)).id
    durable.run_until_idle(advance_clock=False)
    send_event("bulk.dated", {"at": at, "n": 7})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(matching) == 7
    assert Run.objects.get(id=other).status == RunStatus.WAITING
