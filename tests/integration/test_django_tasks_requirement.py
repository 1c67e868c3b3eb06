"""Django >= 6.0 only: on Django 5.2 ``celery_durable.tasks`` does not import, and E020 says why."""

import importlib
import sys

import django
import pytest
from django.core import checks
from django.test import override_settings

from celery_durable.checks import DJANGO_TASKS_BACKEND, django_tasks_messages

TASKS = {"default": {"BACKEND": DJANGO_TASKS_BACKEND}}
before_6 = pytest.mark.skipif(django.VERSION >= (6, 0), reason="checks Django < 6.0 (this is Django >= 6.0)")


@before_6
def test_import_names_the_requirement(monkeypatch):
    monkeypatch.delitem(sys.modules, "celery_durable.tasks", raising=False)
    with pytest.raises(ImportError, match=r"celery_durable\.tasks needs Django >= 6\.0 .*this is Django 5\.") as info:
        importlib.import_module("celery_durable.tasks")
    assert info.value.name == "celery_durable.tasks"


@before_6
def test_celery_autodiscovery_skips_it(monkeypatch):
    """Celery imports every installed app's ``tasks`` module: celery_durable's must not stop a worker."""
    from celery.loaders.base import find_related_module

    monkeypatch.delitem(sys.modules, "celery_durable.tasks", raising=False)
    assert find_related_module("celery_durable", "tasks") is None


@before_6
def test_no_W011_from_it():
    ids = [message.id for message in checks.run_checks()]
    assert "celery_durable.W011" not in ids


@before_6
def test_system_check_E020_when_TASKS_names_the_backend():
    with override_settings(TASKS=TASKS):
        ids = [message.id for message in checks.run_checks()]
    assert "celery_durable.E020" in ids


@before_6
def test_no_E020_without_the_backend():
    with override_settings(TASKS={"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}):
        ids = [message.id for message in checks.run_checks()]
    assert "celery_durable.E020" not in ids


def test_E020_is_about_the_django_version_only():
    [message] = django_tasks_messages(TASKS, version=(5, 2))
    assert message.id == "celery_durable.E020" and "needs Django >= 6.0" in message.msg
    assert django_tasks_messages(TASKS, version=(6, 0)) == []
    assert django_tasks_messages(None, version=(5, 2)) == []
