"""Events keep the id they were sent with; a separate unique ``dedup_key`` deduplicates.

Before, reusing an id after the idempotency window renamed the old row's ``event_id`` to
``<id>~<random>``, cut at 255 characters: a 255-character id was renamed to itself (the
stale event came back every time) and a 254-character one collided on its third use.
"""

from django.db import migrations, models
from django.db.models import F


def copy_ids(apps, schema_editor):
    Event = apps.get_model("celery_durable", "Event")
    Event.objects.using(schema_editor.connection.alias).filter(event_id__isnull=False).update(dedup_key=F("event_id"))


def binary_collation(apps, schema_editor):
    """MySQL/MariaDB: compare the key byte for byte, as 0008 does for ``event_id``."""
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    collation = "utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin"
    quote = schema_editor.quote_name
    schema_editor.execute(
        f"ALTER TABLE {quote('celery_durable_event')} MODIFY {quote('dedup_key')} varchar(255) "
        f"CHARACTER SET utf8mb4 COLLATE {collation} NULL"
    )


class Migration(migrations.Migration):
    atomic = False  # DDL on MySQL cannot run inside a transaction

    dependencies = [("celery_durable", "0008_mysql_binary_keys")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="dedup_key",
            field=models.CharField(blank=True, max_length=255, null=True, unique=True),
        ),
        migrations.RunPython(binary_collation, migrations.RunPython.noop, atomic=False, elidable=False),
        migrations.RunPython(copy_ids, migrations.RunPython.noop, elidable=False),
        migrations.AlterField(
            model_name="event",
            name="event_id",
            field=models.CharField(blank=True, max_length=255, null=True),
        ),
    ]
