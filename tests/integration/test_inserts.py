"""``store.inserts``: the compiled INSERT writes what ``Model.objects.create()`` writes."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext

from celery_durable import clock
from celery_durable.models import Run
from celery_durable.store import inserts, runs


def row(run_id):
    values = model_to_dict(Run.objects.get(id=run_id))
    values.pop("id")
    return values


def test_insert_row__writes_the_row_create_writes__defaults_included(durable):
    now = clock.now()
    given = {
        "task_name": "t.any",
        "args": '[1, "x"]',
        "kwargs": "{}",
        "options": "{}",
        "created_at": now,
        "published_at": now,
        "start_by": now + timedelta(seconds=5),
        "slot_key1": "user:1",
        "priority": -3,
    }
    Run.objects.create(id="by-the-orm", **given)
    inserts.insert_row(Run, {"id": "compiled", **given})
    assert row("compiled") == row("by-the-orm")
    assert Run.objects.get(id="compiled").fair_weight == 1  # a default the values left out


def test_insert_row__one_statement_and_a_field_name_it_does_not_know_is_refused(durable):
    with CaptureQueriesContext(connection) as captured:
        inserts.insert_row(Run, {"id": "one", "task_name": "t.any", "created_at": clock.now()})
    assert [query["sql"].split()[0] for query in captured] == ["INSERT"]
    with pytest.raises(TypeError, match="no field parent, tsk_name"):
        inserts.insert_row(Run, {"id": "two", "tsk_name": "t.any", "parent": None, "created_at": clock.now()})
    assert not Run.objects.filter(id="two").exists()


def test_create__an_existing_id_is_told_and_the_row_is_left_alone(durable):
    assert runs.create(run_id="same", task_name="t.first", args="[]", kwargs="{}", options="{}")
    assert not runs.create(run_id="same", task_name="t.second", args="[]", kwargs="{}", options="{}")
    with transaction.atomic():  # inside a caller's transaction too: the savepoint keeps it usable
        assert not runs.create(run_id="same", task_name="t.third", args="[]", kwargs="{}", options="{}")
        assert Run.objects.get(id="same").task_name == "t.first"
    with pytest.raises(IntegrityError):
        inserts.insert_row(Run, {"id": "same", "task_name": "t.fourth", "created_at": clock.now()})
