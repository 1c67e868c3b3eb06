"""The hot queries use their indexes on realistically sized tables (PostgreSQL only).

A module fixture fills the durable tables with 40,000 runs in every state (mostly finished,
as in production), their steps, 20,000 events, 20,000 flow-control rows and 20,000 slots,
then ``ANALYZE``. Each test calls the real library function under
``CaptureQueriesContext`` and runs ``EXPLAIN (FORMAT JSON)`` on every statement it issued
against a durable table: none may be a sequential scan, and the statement that matters
must use the index named for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from celery_durable import send_event
from celery_durable.models import Run
from celery_durable.states import RunStatus
from celery_durable.store import events, recovery, slots
from celery_durable.store.cancellation import take_timed_out
from tests.integration.conftest import execute
from tests.testapp import flows

RUNS = 40_000
TABLES = (
    "celery_durable_run",
    "celery_durable_step",
    "celery_durable_runmetadata",
    "celery_durable_event",
    "celery_durable_flowstate",
    "celery_durable_slot",
)

# Run i gets a status by its position: 70 % finished, the rest spread over the live states.
FILL = f"""
INSERT INTO celery_durable_run (
    id, task_name, status, args, kwargs, options, priority, generation, executions, recoveries,
    created_at, started_at, finished_at, published_at, wake_at, waiting_for, lease_owner, lease_expires_at,
    slot_key1, holds_slots, backlog_at, finish_by, start_by, parent_id, parent_step, children_pending, durable
)
SELECT 'bulk-' || i, 't.bulk' || (i % 20), s.status, '[1, 2]', '{{}}', '{{}}', 0, 1, 1, 0,
       clock_timestamp() - i * interval '30 seconds',
       CASE WHEN s.status <> 'pending' THEN clock_timestamp() - i * interval '30 seconds' END,
       CASE WHEN s.status IN ('completed', 'failed') THEN clock_timestamp() - i * interval '29 seconds' END,
       CASE WHEN s.status = 'queued' AND i % 60 = 0 THEN clock_timestamp() - interval '10 minutes'  -- message lost
            WHEN s.status = 'queued' THEN clock_timestamp() - interval '5 seconds'
            WHEN s.status <> 'pending' THEN clock_timestamp() - i * interval '30 seconds' END,
       CASE WHEN s.status = 'sleeping' AND i % 100 = 0 THEN clock_timestamp() - interval '1 second'  -- due now
            WHEN s.status = 'sleeping' THEN clock_timestamp() + interval '1 hour' + (i % 5000) * interval '1 minute'
            WHEN s.status = 'waiting' AND i % 2 = 0 THEN clock_timestamp() + interval '1 day' END,
       CASE WHEN s.status = 'waiting' THEN 'bulk.event' || (i % 500) END,
       CASE WHEN s.status = 'running' THEN 'worker-' || (i % 8) END,
       CASE WHEN s.status = 'running' AND i % 60 = 0 THEN clock_timestamp() - interval '1 minute'  -- worker died
            WHEN s.status = 'running' THEN clock_timestamp() + interval '1 hour' END,
       CASE WHEN s.status IN ('pending', 'running') THEN 'f.per_user:user_id:' || (i % 300) END,
       s.status = 'running',
       CASE WHEN s.status = 'pending' THEN clock_timestamp() - i * interval '30 seconds' END,
       CASE WHEN i % 40 = 0 THEN clock_timestamp() + interval '2 hours' END,
       CASE WHEN i % 40 = 1 AND s.status = 'pending' THEN clock_timestamp() + interval '2 hours' END,
       CASE WHEN i > {RUNS - 1000} THEN 'bulk-' || (i - {RUNS - 1000}) END,
       CASE WHEN i > {RUNS - 1000} THEN 'child' END,
       0, true
FROM generate_series(1, {RUNS}) AS i,
LATERAL (SELECT CASE WHEN i <= {RUNS * 70 // 100} THEN 'completed'
                     WHEN i <= {RUNS * 80 // 100} THEN 'sleeping'
                     WHEN i <= {RUNS * 85 // 100} THEN 'waiting'
                     WHEN i <= {RUNS * 90 // 100} THEN 'pending'
                     WHEN i <= {RUNS * 93 // 100} THEN 'running'
                     WHEN i <= {RUNS * 96 // 100} THEN 'queued'
                     ELSE 'failed' END AS status) AS s;
INSERT INTO celery_durable_step (run_id, step_id, kind, status, output, attempts, started_at, finished_at)
SELECT r.id, n.step_id, 'run', 'completed', '1', 1, r.created_at, r.created_at
FROM celery_durable_run r, (VALUES ('one'), ('two')) AS n(step_id) WHERE r.status = 'completed';
INSERT INTO celery_durable_step (run_id, step_id, kind, status, output, attempts, started_at, finished_at)
SELECT id, 'wait', 'wait', 'pending', '{{"name": "' || waiting_for || '", "match": null}}', 1, created_at, created_at
FROM celery_durable_run WHERE status = 'waiting';
INSERT INTO celery_durable_runmetadata (run_id, field, value)
SELECT id, f.field, CASE f.field WHEN 'customer' THEN 'customer-' || (length(id) % 7) ELSE substr(id, 6) END
FROM celery_durable_run, (VALUES ('customer'), ('order_id')) AS f(field) WHERE id LIKE 'bulk-%';
INSERT INTO celery_durable_event (name, data, event_id, received_at)
SELECT 'bulk.event' || (i % 500), '{{"n": ' || i || '}}', md5(i::text), clock_timestamp() - i * interval '1 minute'
FROM generate_series(1, 20000) AS i;
INSERT INTO celery_durable_flowstate (name, run_id, expires_at, started_at, admitted)
SELECT (ARRAY['idempotency_key:f.idempotent:', 'debounce:f.debounced:', 'singleton:f.singleton_skip:'])[i % 3 + 1] || i,
       'bulk-' || i, clock_timestamp() - interval '1 hour', clock_timestamp() - interval '1 hour', '[]'
FROM generate_series(1, 20000) AS i;
INSERT INTO celery_durable_slot (key, "limit", in_use)
SELECT 'f.per_user:user_id:' || i, 1, CASE WHEN i < 300 THEN 1 ELSE 0 END FROM generate_series(0, 19999) AS i;
"""


@pytest.fixture(scope="module")
def big_tables(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    if connection.vendor != "postgresql":
        pytest.skip("query plans are checked on PostgreSQL, the production database")
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            runs, _, rest = FILL.partition("INSERT INTO celery_durable_step")
            cursor.execute(runs)
            # Before the rows that reference runs: the foreign-key checks are planned with the
            # run table's statistics (an empty table: a sequential scan per checked row).
            cursor.execute("ANALYZE celery_durable_run")
            cursor.execute("INSERT INTO celery_durable_step" + rest)
            cursor.execute(f"ANALYZE {', '.join(TABLES)}")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {', '.join(TABLES)}")
                cursor.execute(f"ANALYZE {', '.join(TABLES)}")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


# An INSERT only with a SELECT (a fenced write); WITH: a recursive query or one statement of several writes.
PLANNED = ("SELECT", "UPDATE", "DELETE", "WITH", "INSERT")
# Django adds a ``varchar_pattern_ops`` twin to every indexed varchar on PostgreSQL; the planner
# may pick either for an equality, so a primary or unique key matches both names.
KEY = {
    "run id": r"celery_durable_run_(pkey|id_\w+_like)",
    "flow state name": r"celery_durable_flowstate_name_(key|\w+_like)",
    "slot key": r"celery_durable_slot_key_(key|\w+_like)",
}


def plans_of(call: Callable[[], Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Call ``call``; return each statement it ran on a durable table with its plan's nodes."""
    with CaptureQueriesContext(connection) as captured:
        call()
    found = []
    for query in captured.captured_queries:
        sql = query["sql"]
        verb = sql.lstrip().split(None, 1)[0].upper()
        if "celery_durable_" not in sql or verb not in PLANNED or (verb == "INSERT" and "SELECT" not in sql):
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str | bytes):
            plan = json.loads(plan)
        found.append((sql, list(_nodes(plan[0]["Plan"]))))
    assert found, "the call issued no statement on a durable table"
    return found


def assert_indexed(call: Callable[[], Any], *indexes: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """No statement of ``call`` scans a durable table sequentially; each of ``indexes`` is used.

    ``indexes`` are index names or, for keys, regular expressions from ``KEY``.
    """
    statements = plans_of(call)
    used = set()
    for sql, nodes in statements:
        for node in nodes:
            relation = node.get("Relation Name", "")
            assert not (node["Node Type"] == "Seq Scan" and relation.startswith("celery_durable_")), (
                f"sequential scan of {relation}:\n{sql}"
            )
            if "Index Name" in node:
                used.add(node["Index Name"])
    missing = [index for index in indexes if not any(re.fullmatch(index, name) for name in used)]
    assert not missing, f"index(es) {sorted(missing)} unused; used: {sorted(used)}"
    return statements


pytestmark = [pytest.mark.services, pytest.mark.usefixtures("big_tables")]


def test_waker__due_runs_and_deadlines(durable):
    assert Run.objects.count() >= RUNS  # the fixture's rows are visible
    statements = assert_indexed(lambda: recovery.take_due(500), "durable_run_due")
    assert any(sql.startswith("UPDATE") for sql, _ in statements)  # due runs were found and queued
    assert_indexed(lambda: take_timed_out(500), "durable_run_finish_by", "durable_run_start_by")


def test_idle_probe__of_every_service_uses_their_indexes(durable):
    assert_indexed(
        lambda: recovery.work_pending(1.0, 120.0),
        "durable_run_due",
        "durable_run_published",
        "durable_run_lease",
        "durable_run_finish_by",
        "durable_run_start_by",
    )


def test_sweeper__unpublished_runs(durable):
    statements = assert_indexed(lambda: recovery.take_unpublished(120.0, 500), "durable_run_published")
    assert any(sql.startswith("UPDATE") for sql, _ in statements)


def test_reaper__expired_leases(durable):
    statements = assert_indexed(lambda: recovery.take_expired(20, 500), "durable_run_lease")
    assert any(sql.startswith("UPDATE") for sql, _ in statements)


def test_slots__acquire_hand_off_backlog_and_backstops(durable):
    run_id = "bulk-37000"  # running, holds its slot of user 100 (in the backlog: pending runs of user 100)
    assert_indexed(lambda: flows.per_user.delay(100_000), KEY["slot key"])
    Run.objects.filter(id=run_id).update(status=RunStatus.COMPLETED)
    statements = assert_indexed(lambda: slots.release(run_id), "durable_run_backlog1", "durable_run_backlog2")
    assert any("pending" in sql for sql, _ in statements)
    assert Run.objects.filter(slot_key1="f.per_user:user_id:100", status=RunStatus.QUEUED).count() == 1  # handed off
    assert_indexed(lambda: slots.repair(100), "durable_run_holds")
    assert_indexed(lambda: slots.promote_stranded(100), "durable_run_backlog1")


def test_inline_hand_off__the_completion_claims_the_backlogs_head_by_its_indexes(durable):
    from datetime import timedelta

    from celery_durable import clock
    from celery_durable.store import endings
    from celery_durable.store.handover import InlineClaim

    key = "f.per_user:user_id:100"
    done = Run.objects.get(id="bulk-37000")  # running, holds its slot of user 100
    head = Run.objects.filter(status=RunStatus.PENDING, slot_key1=key).order_by("backlog_at", "id").first()
    claim = InlineClaim(head.task_name, "plans-owner", clock.now() + timedelta(seconds=30))
    statements = assert_indexed(
        lambda: endings.complete_handing_over(done.id, done.generation, "1", key, claim=claim),
        KEY["run id"],
        "durable_run_backlog1",
    )
    assert any("taken AS (UPDATE" in sql for sql, _ in statements)
    claimed = Run.objects.get(id=head.id)
    assert (claimed.status, claimed.lease_owner, claimed.generation) == (
        RunStatus.RUNNING,
        "plans-owner",
        head.generation + 1,
    )


def test_events__resume_waiting_runs_and_find_past_events(durable, monkeypatch):
    statements = assert_indexed(lambda: send_event("bulk.event7", {"n": 1}), "durable_run_waiting")
    assert any("celery_durable_step" in sql for sql, _ in statements)  # the waits' steps were read
    assert not Run.objects.filter(waiting_for="bulk.event7", status=RunStatus.WAITING).exists()  # all resumed
    # find_event iterates with a server-side cursor, which CaptureQueriesContext does not see.
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    assert_indexed(lambda: events.find_event("bulk-33000", ["bulk.event3"], None, set()), "durable_event_name")


def test_cancel_on__reads_only_the_tasks_unfinished_runs(durable):
    assert_indexed(lambda: send_event("order.cancelled", {"order_id": 1}), "durable_run_task_status")


def test_admission__idempotency_debounce_singleton(durable):
    assert_indexed(lambda: flows.idempotent.delay(17), KEY["flow state name"])
    assert_indexed(lambda: flows.debounced.delay("acme", 1), KEY["flow state name"])
    assert_indexed(lambda: flows.singleton_skip.delay(4), KEY["flow state name"])
    assert_indexed(lambda: flows.idempotent.delay(17), KEY["flow state name"])  # the existing run


def test_worker__claim_checkpoints_sleep_resume_and_completion(durable):
    run_id = flows.sleepy.delay(60).id
    assert_indexed(lambda: execute(run_id), KEY["run id"])  # claim, fenced step write, sleep
    assert Run.objects.get(id=run_id).status == RunStatus.SLEEPING
    durable.clock.advance(61)
    assert run_id in [message.run_id for message in recovery.take_due(500)]
    assert_indexed(lambda: execute(run_id), KEY["run id"], "durable_step_unique")  # resumed: checkpoints read
    assert Run.objects.get(id=run_id).status == RunStatus.COMPLETED


def test_admin__changelist_default_page(admin_client):
    statements = assert_indexed(
        lambda: admin_client.get(reverse("admin:celery_durable_run_changelist")), "durable_run_created"
    )
    assert any("ORDER BY" in sql and "LIMIT" in sql for sql, _ in statements)


def test_admin__metadata_search(admin_client):
    changelist = reverse("admin:celery_durable_run_changelist")
    statements = assert_indexed(lambda: admin_client.get(changelist, {"q": "order_id:12345"}), "durable_meta_value")
    assert any("celery_durable_runmetadata" in sql for sql, _ in statements)


def test_fair_promotion__probes_the_fair_index(durable):
    held = flows.fair.delay("a", 0)
    for n in range(40):
        flows.fair.delay("a" if n % 3 else "b", n)
    Run.objects.filter(id=held.id).update(status=RunStatus.COMPLETED)
    assert_indexed(lambda: slots.release(held.id), "durable_run_fair_turn")
    assert Run.objects.filter(task_name="f.fair", status=RunStatus.QUEUED).count() == 1


def test_fair_call__places_its_run_with_two_index_probes(durable):
    flows.fair.delay("a", 0)
    for n in range(40):
        flows.fair.delay("a" if n % 3 else "b", n)
    # A tenant's first waiting run: its last runs (the value index: none), the head's round (the turn index).
    assert_indexed(lambda: flows.fair.delay("c", 99), "durable_run_fair_turn", "durable_run_fair")


def test_admin__dashboard_reads_the_partial_indexes(admin_client):
    # Due sleepers and waits that time out (wake_at IS NOT NULL), the longest key backlogs
    # (slot_key1 IS NOT NULL), throughput (finished_at IS NOT NULL): each a partial index on
    # PostgreSQL (migration 0017), whose condition the dashboard's queries imply.
    assert_indexed(
        lambda: admin_client.get(reverse("admin:celery_durable_run_dashboard")),
        "durable_run_due",
        "durable_run_backlog1",
        "durable_run_finished",
    )


def test_admin__key_filter_and_run_page_children_and_forks(admin_client):
    changelist = reverse("admin:celery_durable_run_changelist")
    assert_indexed(lambda: admin_client.get(changelist, {"key": "f.per_user:user_id:7"}), "durable_run_key1_created")
    parent = "bulk-1"  # the parent of bulk-39001 (the fixture's last 1,000 runs are children)
    Run.objects.filter(id="bulk-2").update(forked_from_id=parent, forked_at_step="one")
    page = reverse("admin:celery_durable_run_change", args=[parent])
    assert_indexed(lambda: admin_client.get(page), "durable_run_parent", r"celery_durable_run_forked_from_id_[0-9a-f]+")
