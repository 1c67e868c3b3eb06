from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("testapp", "0003_interval_pid"),
    ]

    operations = [
        migrations.CreateModel(
            name="ChaosCounter",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("run_id", models.CharField(max_length=255)),
                ("step", models.CharField(max_length=255)),
                ("count", models.IntegerField(default=0)),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("run_id", "step"), name="chaos_counter_unique")],
            },
        ),
        migrations.CreateModel(
            name="ChaosAttempt",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("run_id", models.CharField(max_length=255)),
                ("step", models.CharField(max_length=255)),
                ("n", models.IntegerField()),
                ("pid", models.IntegerField()),
                ("atomic", models.BooleanField(default=False)),
                ("key", models.CharField(max_length=255, null=True)),
                ("started", models.DateTimeField()),
                ("ended", models.DateTimeField(null=True)),
            ],
        ),
        migrations.CreateModel(
            name="ChaosClaim",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("run_id", models.CharField(max_length=255)),
                ("execution", models.IntegerField()),
                ("pid", models.IntegerField()),
                ("at", models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name="ChaosFault",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(max_length=64)),
                ("at", models.DateTimeField()),
                ("until", models.DateTimeField(null=True)),
                ("pids", models.TextField(default="[]", help_text='JSON list of pids hit, or "*" for every process')),
                (
                    "detail",
                    models.TextField(default="{}", help_text="JSON details (runs and their lease expiry for kills)"),
                ),
            ],
        ),
    ]
