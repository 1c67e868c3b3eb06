# Indexes behind the admin's concurrency-key filter and search.
#
# Database-only, like 0003_admin_indexes: the model state is unchanged, so `makemigrations`
# sees no difference.

from django.db import migrations, models


INDEXES = [
    models.Index(fields=["slot_key1", "created_at"], name="durable_run_key1_created"),
    models.Index(fields=["slot_key2", "created_at"], name="durable_run_key2_created"),
]


class Migration(migrations.Migration):

    dependencies = [
        ("celery_durable", "0005_concurrency"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.AddIndex(model_name="run", index=index) for index in INDEXES],
            state_operations=[],
        )
    ]
