from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("testapp", "0002_interval"),
    ]

    operations = [
        migrations.AddField(model_name="interval", name="pid", field=models.IntegerField(default=0)),
    ]
