"""A database without celery-durable's tables: ``DurableNotMigrated`` naming ``migrate``, not a driver error."""

import pytest
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

import celery_durable
from celery_durable import DurableNotMigrated
from celery_durable.dbcheck import not_migrated
from tests.testapp.flows import idempotent
from tests.testapp.tasks import add


def migrate_forward() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def unmigrated(transactional_db):
    """A database where celery_durable's migrations are unapplied (tables dropped, records gone).

    (Migrating back to zero is not used: a reverse migration fails on SQLite and MariaDB.)
    The fixture migrates forward again afterwards, as ``manage.py migrate`` would.
    """
    from django.apps import apps
    from django.db.migrations.recorder import MigrationRecorder

    models = list(apps.get_app_config("celery_durable").get_models())
    run_last = sorted(models, key=lambda model: model._meta.model_name == "run")  # the others refer to it
    with connection.schema_editor() as editor:
        for model in run_last:
            editor.delete_model(model)
    MigrationRecorder(connection).migration_qs.filter(app="celery_durable").delete()
    assert "celery_durable_run" not in connection.introspection.table_names()
    yield
    migrate_forward()
    assert "celery_durable_run" in connection.introspection.table_names()


def assert_names_migrate(error: DurableNotMigrated) -> None:
    message = str(error)
    assert "python manage.py migrate" in message
    assert "celery_durable_" in message
    assert isinstance(error.__cause__, DatabaseError)


def test_delay_without_tables__raises_durable_not_migrated(unmigrated):
    with pytest.raises(DurableNotMigrated) as raised:
        add.delay(1, 2)
    assert_names_migrate(raised.value)
    assert isinstance(raised.value, celery_durable.DurableError)


def test_delay_of_an_admitted_task_without_tables__raises_durable_not_migrated(unmigrated):
    # idempotency_key= goes through flow control's tables first.
    with pytest.raises(DurableNotMigrated) as raised:
        idempotent.delay(order_id=7)
    assert_names_migrate(raised.value)


def test_send_event_without_tables__raises_durable_not_migrated(unmigrated):
    with pytest.raises(DurableNotMigrated) as raised:
        celery_durable.send_event("order.paid", {"order": 7})
    assert_names_migrate(raised.value)


def test_after_migrate__delay_records_the_run(unmigrated):
    migrate_forward()
    result = add.delay(1, 2)
    from celery_durable.models import Run

    assert Run.objects.filter(id=result.id).exists()


def test_other_database_errors_are_not_translated(db):
    with pytest.raises(DatabaseError) as raised, connection.cursor() as cursor:
        cursor.execute("SELECT * FROM some_table_of_another_app")
    assert not_migrated(raised.value) is None
    assert not_migrated(ValueError("celery_durable_run does not exist")) is None
