from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tests.celery_app import app  # noqa: F401  (the app every test task binds to)
        from tests.testapp import (  # noqa: F401  (the test tasks)
            batch_tasks,
            chaos_tasks,
            deploy_tasks,
            fence_tasks,
            flows,
            observe_tasks,
            priority_tasks,
            tasks,
        )
