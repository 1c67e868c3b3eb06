# Indexes behind the admin's filters, the dashboard and retention pruning.
#
# Database-only: the model state is left unchanged (models.py is owned by the run state
# machine; these indexes serve the monitoring surfaces), so `makemigrations` sees no
# difference. Moving them into Run.Meta.indexes later needs a state-only migration.

from django.db import migrations, models


INDEXES = [
    # Changelist filtered by status, newest first; dashboard and metrics: unfinished runs per
    # task (index-only on PostgreSQL thanks to INCLUDE; other databases ignore it).
    models.Index(fields=["status", "created_at"], include=["task_name"], name="durable_run_status_created"),
    # Changelist filtered by task and status, newest first; dashboard backlog per task.
    models.Index(fields=["task_name", "status", "created_at"], name="durable_run_task_status"),
    # Dashboard throughput over the last hours; durable_prune (finished before a cutoff).
    models.Index(fields=["finished_at", "status"], include=["task_name"], name="durable_run_finished"),
]


class Migration(migrations.Migration):

    dependencies = [
        ("celery_durable", "0002_suspension"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.AddIndex(model_name="run", index=index) for index in INDEXES],
            state_operations=[],
        )
    ]
