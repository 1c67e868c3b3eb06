"""``step.set_metadata`` (indexed equality search) and ``step.progress``."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_durable import fork, get_run
from celery_durable.models import Run, RunMetadata
from celery_durable.store.metadata import matching
from tests.testapp import tasks


def _index(run_id):
    return dict(RunMetadata.objects.filter(run_id=run_id).values_list("field", "value"))


def test_set_metadata__stored_on_the_run_and_indexed(durable):
    run = tasks.tagged.delay(41)
    durable.run_until_idle()
    stored = get_run(run.id)
    assert stored.metadata_value == {"order_id": 41, "customer": "acme", "stage": "fetched"}
    assert _index(run.id) == {"order_id": "41", "customer": "acme", "stage": "fetched"}


def test_set_metadata__search_by_equality(durable):
    one = tasks.tagged.delay(1, customer="acme")
    two = tasks.tagged.delay(2, customer="globex")
    three = tasks.tagged.delay(3, customer="acme")
    durable.run_until_idle()
    found = matching(Run.objects.all(), [("customer", "acme")])
    assert sorted(found.values_list("id", flat=True)) == sorted([one.id, three.id])
    assert list(
        matching(Run.objects.all(), [("customer", "acme"), ("order_id", "3")]).values_list("id", flat=True)
    ) == [three.id]
    assert list(matching(Run.objects.all(), [("order_id", 2)]).values_list("id", flat=True)) == [two.id]
    assert not matching(Run.objects.all(), [("customer", "nobody")]).exists()
    # Byte for byte on every database (MySQL/MariaDB too: migration 0011 sets a binary collation).
    assert not matching(Run.objects.all(), [("customer", "ACME")]).exists()
    assert not matching(Run.objects.all(), [("customer", "acme ")]).exists()
    assert not matching(Run.objects.all(), [("Customer", "acme")]).exists()


def test_set_metadata__a_replay_that_sets_the_same_values_writes_nothing(durable):
    durable.fail_step("t.tagged", "charge", ConnectionError("down"), times=1)
    run = tasks.tagged.delay(5)
    durable.run_until_idle(max_executions=1)
    assert get_run(run.id).status == "queued"  # "charge" failed once and retries
    with CaptureQueriesContext(connection) as captured:
        durable.run_until_idle()
    assert durable.result(run.id)["a"] == 6
    writes = [q["sql"] for q in captured.captured_queries if "celery_durable_runmetadata" in q["sql"]]
    assert writes == []  # the replayed set_metadata calls stored the same values: no write
    assert get_run(run.id).metadata_value == {"order_id": 5, "customer": "acme", "stage": "fetched"}


def test_set_metadata__a_fork_with_new_arguments_records_its_own_values(durable):
    run = tasks.tagged.delay(7, customer="acme")
    durable.run_until_idle()
    forked = fork(run.id, from_step="charge", kwargs={"customer": "globex"}, args=[7])
    durable.run_until_idle()
    assert get_run(forked.id).metadata_value == {"order_id": 7, "customer": "globex", "stage": "fetched"}
    assert get_run(run.id).metadata_value["customer"] == "acme"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("not-an-identifier", 1),
        ("x" * 65, 1),
        ("nested", {"a": 1}),
        ("listed", [1]),
        ("long", "v" * 201),
        ("nul", "a\x00b"),
    ],
)
def test_set_metadata__bad_input_fails_the_run_and_stores_nothing(durable, field, value):
    run = tasks.bad_metadata.delay(field, value)
    durable.run_until_idle()
    stored = get_run(run.id)
    assert stored.status == "failed"
    assert stored.error_value["type"] == "InvalidMetadata"
    assert stored.metadata_value == {} and not RunMetadata.objects.filter(run_id=run.id).exists()


def test_progress__stored_on_the_run_with_its_step(durable):
    run = tasks.tagged.delay(1)
    durable.run_until_idle()
    progress = get_run(run.id).progress_value
    assert {k: progress[k] for k in ("done", "total", "message", "step")} == {
        "done": 2,
        "total": 2,
        "message": "done",
        "step": "charge",
    }


def test_durable_runs_list__meta_filter(durable):
    import io
    import json

    from django.core.management import call_command
    from django.core.management.base import CommandError

    one = tasks.tagged.delay(1, customer="acme")
    tasks.tagged.delay(2, customer="globex")
    durable.run_until_idle()

    def listed(*args):
        out = io.StringIO()
        call_command("durable_runs", "list", "--json", *args, stdout=out)
        return [item["id"] for item in json.loads(out.getvalue())]

    assert listed("--meta", "customer=acme") == [one.id]
    assert listed("--meta", "customer=acme", "--meta", "order_id=1") == [one.id]
    assert listed("--meta", "customer=acme", "--meta", "order_id=2") == []
    with pytest.raises(CommandError, match="FIELD=VALUE"):
        listed("--meta", "customer")


@pytest.mark.parametrize("lost", ["taken_over", "reaped"])
def test_metadata_and_progress__of_an_execution_that_lost_its_run_write_nothing(durable, lost):
    from django.db.models import F

    from celery_durable.exceptions import _LeaseLost
    from celery_durable.store import claims, metadata

    run = tasks.tagged.delay(1)
    claim = claims.claim(run.id, "worker-a", 30)
    assert claim is not None
    if lost == "taken_over":  # another execution claimed it since
        Run.objects.filter(id=run.id).update(generation=F("generation") + 1)
    else:  # the reaper queued it again (same generation, no longer running)
        Run.objects.filter(id=run.id).update(status="queued")
    with pytest.raises(_LeaseLost):
        metadata.set_metadata(run.id, claim.generation, {"a": 1}, {"a": 1}, "default")
    with pytest.raises(_LeaseLost):
        metadata.set_progress(run.id, claim.generation, {"done": 1, "total": 2}, "default")
    stored = get_run(run.id)
    assert stored.metadata_value == {} and stored.progress is None
    assert not RunMetadata.objects.filter(run_id=run.id).exists()
