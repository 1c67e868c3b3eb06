# Smaller writes on PostgreSQL: the run table's flow-control and deadline indexes become
# partial, each holding only the rows its queries look for (a run that is not sleeping has no
# entry in the due index, a run without a concurrency key none in the backlog indexes...).
#
# A status change is not a HOT update (status is indexed), so every index of the table gets an
# entry for the new row version: 23 before, 7 or 8 now for a run without flow control (the
# primary key and its pattern twin, the admin's four and durable_run_published, which the
# sweeper's watermark reads for every status). That is most of the cost of send_event resuming
# many runs, and a share of every claim and completion.
#
# Database-only and PostgreSQL-only: the model state keeps plain indexes (what MySQL/MariaDB,
# which have no partial indexes, and SQLite, whose planner would not prove the conditions from
# bound parameters, get), so `manage.py check` has no W037 warning on MySQL. Every condition is
# implied by the queries that use the index (a comparison on a column implies it is not NULL);
# tests/integration/test_query_plans.py checks the plans on a 40,000-run table.
#
# The forked_from foreign key's own index becomes partial too (under its name), and its
# varchar_pattern_ops twin, which no query uses, is dropped.
#
# On SQLite, the database-only indexes of 0003 and 0006 are created again: the table rebuilds
# that SQLite does for AlterField (0007, 0009, 0013...) make the table from the model state, so
# they were lost there. tests/integration/test_migration_partial_indexes.py checks that every
# database has them after the last migration.

from django.db import migrations, models
from django.db.models import Q


def _index(name, fields, include=()):
    return models.Index(fields=fields, include=list(include), name=name)


#: (the plain index, the rows its partial version holds)
PARTIAL = [
    (_index("durable_run_due", ["status", "wake_at"]), Q(wake_at__isnull=False)),
    (_index("durable_run_lease", ["status", "lease_expires_at"]), Q(lease_expires_at__isnull=False)),
    (_index("durable_run_waiting", ["status", "waiting_for"]), Q(status="waiting")),
    (_index("durable_run_finish_by", ["finish_by"]), Q(finish_by__isnull=False)),
    (_index("durable_run_start_by", ["start_by"]), Q(start_by__isnull=False)),
    (_index("durable_run_finished", ["finished_at", "status"], ["task_name"]), Q(finished_at__isnull=False)),
    (_index("durable_run_backlog1", ["status", "slot_key1", "backlog_at"]), Q(slot_key1__isnull=False)),
    (_index("durable_run_backlog2", ["status", "slot_key2", "backlog_at"]), Q(slot_key2__isnull=False)),
    (_index("durable_run_holds", ["holds_slots", "status"]), Q(holds_slots=True)),
    (_index("durable_run_key1_created", ["slot_key1", "created_at"]), Q(slot_key1__isnull=False)),
    (_index("durable_run_key2_created", ["slot_key2", "created_at"]), Q(slot_key2__isnull=False)),
    (_index("durable_run_parent", ["parent", "parent_step"]), Q(parent__isnull=False)),
    (_index("durable_run_fair", ["status", "fair_slot", "fair_value", "backlog_at"]), Q(fair_slot__isnull=False)),
    (
        _index("durable_run_fair_turn", ["status", "fair_slot", "fair_round", "fair_value", "backlog_at"]),
        Q(fair_slot__isnull=False),
    ),
]


def _partial(index, rows):
    return models.Index(fields=index.fields, include=index.include, name=index.name, condition=rows)


FORKED_FROM = Q(forked_from__isnull=False)

#: The indexes of 0003_admin_indexes and 0006_admin_key_indexes (not in the model state).
DATABASE_ONLY = [
    _index("durable_run_status_created", ["status", "created_at"], ["task_name"]),
    _index("durable_run_task_status", ["task_name", "status", "created_at"]),
    _index("durable_run_finished", ["finished_at", "status"], ["task_name"]),
    _index("durable_run_key1_created", ["slot_key1", "created_at"]),
    _index("durable_run_key2_created", ["slot_key2", "created_at"]),
]


def make_partial(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = apps.get_model("celery_durable", "Run")
    for index, rows in PARTIAL:
        schema_editor.remove_index(run, index)
        schema_editor.add_index(run, _partial(index, rows))
    # The foreign key's index and its _like twin, as Django named them.
    names = sorted(schema_editor._constraint_names(run, ["forked_from_id"], index=True))
    for name in names:
        schema_editor.execute(schema_editor._delete_index_sql(run, name))
    own = next(name for name in names if not name.endswith("_like"))
    schema_editor.add_index(run, models.Index(fields=["forked_from"], name=own, condition=FORKED_FROM))


def make_plain(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = apps.get_model("celery_durable", "Run")
    for index, rows in PARTIAL:
        schema_editor.remove_index(run, _partial(index, rows))
        schema_editor.add_index(run, index)
    for name in schema_editor._constraint_names(run, ["forked_from_id"], index=True):
        schema_editor.execute(schema_editor._delete_index_sql(run, name))
    for sql in schema_editor._field_indexes_sql(run, run._meta.get_field("forked_from")):
        schema_editor.execute(sql)


def restore_on_sqlite(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    run = apps.get_model("celery_durable", "Run")
    with schema_editor.connection.cursor() as cursor:
        existing = schema_editor.connection.introspection.get_constraints(cursor, run._meta.db_table)
    for index in DATABASE_ONLY:
        if index.name not in existing:
            schema_editor.add_index(run, index)


class Migration(migrations.Migration):

    dependencies = [
        ("celery_durable", "0016_fair_rounds"),
    ]

    operations = [
        migrations.RunPython(make_partial, make_plain),
        migrations.RunPython(restore_on_sqlite, migrations.RunPython.noop),
    ]
