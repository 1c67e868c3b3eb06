"""Forks and run metadata with real workers: a fork from the middle step reuses the first
checkpoints (their bodies do not run again); metadata is searchable by equality."""

import pytest

from celery_durable import fork, get_run
from celery_durable.models import Run, Step
from celery_durable.store.metadata import matching
from tests.testapp import tasks
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e


def bodies(run_id):
    return {s: BodyRun.objects.filter(run_id=run_id, step=s).count() for s in ("fetch", "charge", "ship")}


def test_fork__from_the_middle_step_with_a_real_worker(e2e_env, workers):
    workers("forker")
    original = tasks.tagged.apply_async((41,), {"customer": "acme"}, queue=e2e_env["queue"])
    first = original.get(timeout=60)
    assert bodies(original.id) == {"fetch": 1, "charge": 1, "ship": 1}
    before = list(Step.objects.filter(run_id=original.id).order_by("id").values_list("step_id", "output"))

    forked = fork(original.id, from_step="charge", kwargs={"customer": "globex"})
    result = tasks.tagged.AsyncResult(forked.id).get(timeout=60)
    assert result == {**first, "customer": "globex"}
    # "fetch" came from the original's checkpoint: its body did not run in the fork.
    assert bodies(forked.id) == {"fetch": 0, "charge": 1, "ship": 1}
    assert get_run(forked.id).forked_from_id == original.id
    # The original is untouched.
    assert list(Step.objects.filter(run_id=original.id).order_by("id").values_list("step_id", "output")) == before
    assert bodies(original.id) == {"fetch": 1, "charge": 1, "ship": 1}

    # Metadata recorded by each run, searchable by equality.
    assert get_run(forked.id).metadata_value == {"order_id": 41, "customer": "globex", "stage": "fetched"}
    by_customer = matching(Run.objects.all(), [("customer", "acme")])
    assert list(by_customer.values_list("id", flat=True)) == [original.id]
    by_order = matching(Run.objects.all(), [("order_id", "41")])
    assert sorted(by_order.values_list("id", flat=True)) == sorted([original.id, forked.id])
    # The last progress report of "charge" stays on the row (the page shows it only while it runs).
    assert get_run(forked.id).progress_value["step"] == "charge"
