"""Django app configuration: ``ready()`` only registers checks."""

from __future__ import annotations

from django.apps import AppConfig


class CeleryDurableConfig(AppConfig):
    """The ``celery_durable`` Django app."""

    name = "celery_durable"
    label = "celery_durable"
    verbose_name = "Durable runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
