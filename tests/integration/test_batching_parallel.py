"""Batching under concurrent callers: threads released together, each on its own connection.

Whatever the interleaving, every call joins exactly one batch, no batch is larger than
``max_size``, a batch formed by a call is full, and the tick forms the rest.
"""

import pytest

from celery_durable.models import BatchItem, Run
from celery_durable.states import RunStatus
from tests.integration.race_tools import in_parallel
from tests.testapp import batch_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_calls_on_one_key__each_joins_exactly_one_batch(durable):
    calls = in_parallel(lambda n: batch_tasks.collect.delay(account="acme", n=n).id, list(range(12)))
    assert BatchItem.objects.count() == 12
    formed = list(Run.objects.filter(task_name="b.collect"))
    for run in formed:  # formed by a call: full, and exactly its calls' arguments
        items = run.kwargs_value["items"]
        assert len(items) == 3
        assert sorted(i["n"] for i in items) == sorted(
            BatchItem.objects.get(id=call_id).arguments_value["n"]
            for call_id in BatchItem.objects.filter(run=run).values_list("id", flat=True)
        )
    durable.run_until_idle()  # the tick forms whatever still waits
    assert not BatchItem.objects.filter(run__isnull=True).exists()
    runs = Run.objects.filter(task_name="b.collect")
    assert all(run.status == RunStatus.COMPLETED for run in runs)
    numbers = [item["n"] for run in runs for item in run.kwargs_value["items"]]
    assert sorted(numbers) == list(range(12))  # no call lost, none in two batches
    assert sum(durable.result(run.id) for run in runs) == sum(range(12))
    assert set(BatchItem.objects.values_list("id", flat=True)) == set(calls)
