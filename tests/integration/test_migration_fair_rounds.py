"""0016_fair_rounds: fair keys keep their mark and their waiting runs keep the round robin."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from celery_durable.models import Run, Slot

BEFORE = [("celery_durable", "0015_batch")]
AFTER = [("celery_durable", "0016_fair_rounds")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def at_0015(transactional_db):
    apps = migrate(BEFORE)
    yield apps
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_waiting_fair_runs_get_rounds_in_their_value_order(at_0015):
    OldSlot = at_0015.get_model("celery_durable", "Slot")
    OldRun = at_0015.get_model("celery_durable", "Run")
    OldSlot.objects.create(key="fair-key", limit=1, fair_cursor="b", fair_served=1)
    OldSlot.objects.create(key="plain-key", limit=1)
    calls = [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1)]  # (tenant, the round it gets)
    for n, (tenant, _) in enumerate(calls):
        OldRun.objects.create(
            id=f"run-{n}",
            task_name="f.fair",
            status="pending",
            created_at=f"2026-12-06T10:00:0{n}Z",
            backlog_at=f"2026-12-06T10:00:0{n}Z",
            slot_key1="fair-key",
            fair_slot="fair-key",
            fair_value=tenant,
        )
    migrate(AFTER)
    assert dict(Slot.objects.values_list("key", "fair")) == {"fair-key": True, "plain-key": False}
    rows = Run.objects.values_list("id", "fair_value", "fair_round")
    rounds = {run_id: (value, turn) for run_id, value, turn in rows}
    assert rounds == {f"run-{n}": (tenant, turn) for n, (tenant, turn) in enumerate(calls)}
