"""MySQL/MariaDB: compare keys and ids byte for byte, as PostgreSQL and SQLite do.

The default collations there (``utf8mb4_general_ci`` and friends) ignore case and trailing
spaces, so the event ids ``"A"`` and ``"a "``, the step ids ``"Fetch"`` and ``"fetch"``, or
the concurrency keys of users ``"Alice"`` and ``"alice"`` would be one and the same. Other
databases are untouched.
"""

from django.db import migrations

# (table, column, NULL allowed)
COLUMNS = [
    ("celery_durable_event", "event_id", True),
    ("celery_durable_event", "name", False),
    ("celery_durable_flowstate", "name", False),
    ("celery_durable_slot", "key", False),
    ("celery_durable_step", "step_id", False),
    ("celery_durable_run", "slot_key1", True),
    ("celery_durable_run", "slot_key2", True),
    ("celery_durable_run", "waiting_for", True),
]


def binary_collation(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    # Binary and without padding: "a" and "a " differ too (plain utf8mb4_bin pads with spaces).
    collation = "utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin"
    quote = schema_editor.quote_name
    for table, column, null in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} MODIFY {quote(column)} varchar(255) "
            f"CHARACTER SET utf8mb4 COLLATE {collation} {'NULL' if null else 'NOT NULL'}"
        )


class Migration(migrations.Migration):
    atomic = False  # DDL on MySQL cannot run inside a transaction

    dependencies = [("celery_durable", "0007_fewer_indexes")]

    operations = [migrations.RunPython(binary_collation, migrations.RunPython.noop, atomic=False, elidable=False)]
