"""``durable_runs`` and ``durable_prune``: every subcommand, text and ``--json`` output."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from celery_durable import NonRetriableError
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.integration.test_admin import make_runs
from tests.testapp import tasks
from tests.testapp.models import BodyRun


def run_command(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def failed_run(durable, n=1):
    durable.fail_step("t.three_steps", "two", NonRetriableError("card declined"))
    run = tasks.three_steps.delay(n)
    durable.run_until_idle()
    return run.id


def test_list__text_and_json_with_filters(durable):
    failed = failed_run(durable)
    done = tasks.add.delay(1, 2).id
    durable.run_until_idle()
    text = run_command("durable_runs", "list")
    assert failed in text and done in text and "t.three_steps" in text
    data = json.loads(run_command("durable_runs", "list", "--json"))
    assert {item["id"] for item in data} == {failed, done}
    by_id = {item["id"]: item for item in data}
    assert by_id[failed]["status"] == "failed"
    assert (by_id[failed]["steps_done"], by_id[failed]["steps_recorded"]) == (1, 2)
    data = json.loads(run_command("durable_runs", "list", "--json", "--status", "failed"))
    assert [item["id"] for item in data] == [failed]
    data = json.loads(run_command("durable_runs", "list", "--json", "--task", "t.add"))
    assert [item["id"] for item in data] == [done]
    assert len(json.loads(run_command("durable_runs", "list", "--json", "--limit", "1"))) == 1


def test_list__unknown_status__is_a_command_error(db):
    with pytest.raises(CommandError, match="unknown status bogus"):
        run_command("durable_runs", "list", "--status", "failed,bogus")


def test_show__text_and_json(durable):
    run_id = failed_run(durable, n=5)
    text = run_command("durable_runs", "show", run_id)
    assert "NonRetriableError: card declined" in text and "Traceback" in text
    data = json.loads(run_command("durable_runs", "show", run_id, "--json"))
    assert data["run"]["id"] == run_id and data["run"]["args"] == [5]
    assert [(s["step_id"], s["status"]) for s in data["steps"]] == [("one", "completed"), ("two", "failed")]
    assert data["steps"][1]["error"]["type"] == "NonRetriableError"
    assert data["steps"][0]["output"] == 6
    assert data["run"]["concurrency_keys"] == []


def test_show__unknown_run__is_a_command_error(db):
    with pytest.raises(CommandError, match="no durable run"):
        run_command("durable_runs", "show", "nope")


def test_replay__by_id_from_failed_step(durable):
    run_id = failed_run(durable)
    data = json.loads(run_command("durable_runs", "replay", run_id, "--json"))
    assert data == {"done": [run_id], "skipped": {}, "errors": {}}
    durable.run_until_idle()
    assert durable.result(run_id) == 7
    assert BodyRun.objects.filter(run_id=run_id, step="one").count() == 1


def test_replay__from_start_and_from_step(durable):
    first, second = failed_run(durable), failed_run(durable)
    assert "1 run(s) replayed from the start." in run_command("durable_runs", "replay", first, "--from-start")
    assert "replayed from step 'one'" in run_command("durable_runs", "replay", second, "--from-step", "one")
    durable.run_until_idle()
    assert BodyRun.objects.filter(run_id__in=[first, second], step="one").count() == 4


def test_replay__unknown_step__is_a_command_error(durable):
    run_id = failed_run(durable)
    with pytest.raises(CommandError, match="has no step 'zzz'"):
        run_command("durable_runs", "replay", run_id, "--from-step", "zzz")


def test_replay__bulk_by_task_and_status_skips_nothing_else(durable):
    failed = {failed_run(durable, n=i) for i in range(3)}
    done = tasks.add.delay(1, 2).id
    durable.run_until_idle()
    preview = json.loads(run_command("durable_runs", "replay", "--task", "t.three_steps", "--dry-run", "--json"))
    assert preview == {"would_change": 3, "would_skip": {}}
    data = json.loads(run_command("durable_runs", "replay", "--task", "t.three_steps", "--json"))
    assert set(data["done"]) == failed
    assert Run.objects.get(id=done).status == RunStatus.COMPLETED


def test_replay__of_a_completed_run__says_it_was_skipped(durable):
    run_id = tasks.add.delay(1, 2).id
    durable.run_until_idle()
    with pytest.raises(CommandError, match="1 completed"):
        run_command("durable_runs", "replay", run_id)


def test_replay__needs_ids_or_a_selection(db):
    with pytest.raises(CommandError, match="give RUN_IDs"):
        run_command("durable_runs", "replay")
    with pytest.raises(CommandError, match="no durable run"):
        run_command("durable_runs", "replay", "missing-id")


def test_cancel__by_id_and_json(durable):
    queued = tasks.add.delay(1, 2).id
    data = json.loads(run_command("durable_runs", "cancel", queued, "--reason", "bad deploy", "--json"))
    assert data == {"done": [queued], "skipped": {}, "errors": {}}
    run = Run.objects.get(id=queued)
    assert run.status == RunStatus.CANCELLED and run.cancel_reason == "bad deploy"
    with pytest.raises(CommandError, match="1 cancelled"):
        run_command("durable_runs", "cancel", queued)


def test_cancel__bulk_by_task(durable):
    ids = {tasks.add.delay(i, 1).id for i in range(3)}
    text = run_command("durable_runs", "cancel", "--task", "t.add", "--dry-run")
    assert "would change 3 run(s)" in text
    assert "3 run(s) cancelled." in run_command("durable_runs", "cancel", "--task", "t.add")
    assert {r.status for r in Run.objects.filter(id__in=ids)} == {RunStatus.CANCELLED}


# --- durable_prune -----------------------------------------------------------------------------


def age(runs, days):
    Run.objects.filter(id__in=[r.id for r in runs]).update(finished_at=timezone.now() - timedelta(days=days))


def test_prune__deletes_old_finished_runs_in_batches_and_keeps_the_rest(db, django_assert_max_num_queries):
    old = make_runs(7, steps=2)
    age(old, 40)
    recent = make_runs(2, steps=2)
    age(recent, 5)
    unfinished = make_runs(2, status=RunStatus.QUEUED, steps=1)
    Run.objects.filter(id__in=[r.id for r in unfinished]).update(created_at=timezone.now() - timedelta(days=90))
    assert "would delete 7" in run_command("durable_prune", "--older-than", "30d", "--dry-run")
    assert Run.objects.count() == 11
    out = run_command("durable_prune", "--older-than", "30d", "--batch-size", "3", "-v", "2")
    assert "deleted 7 finished run(s)" in out
    assert out.count("so far") == 3  # batches of 3, 3, 1
    remaining = set(Run.objects.values_list("id", flat=True))
    assert remaining == {r.id for r in recent + unfinished}
    assert not Step.objects.filter(run_id__in=[r.id for r in old]).exists()


def test_prune__defaults_to_retention_days(db, settings):
    runs = make_runs(2, steps=1)
    age(runs[:1], 3)
    settings.CELERY_DURABLE = {"RETENTION_DAYS": 2}
    assert "deleted 1 finished run(s)" in run_command("durable_prune")
    assert Run.objects.count() == 1


def test_prune__keeps_children_of_pruned_parents(db):
    parent = make_runs(1, steps=0)[0]
    age([parent], 60)
    child = make_runs(1, status=RunStatus.RUNNING, steps=0, parent=parent)[0]
    run_command("durable_prune", "--older-than", "30d")
    assert Run.objects.get(id=child.id).parent_id is None


@pytest.mark.parametrize("value", ["30x", "", "-3d", "soon"])
def test_prune__bad_age__is_a_command_error(db, value):
    with pytest.raises(CommandError):
        run_command("durable_prune", "--older-than", value)
