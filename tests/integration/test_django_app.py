"""The Django side: migrations, system checks, settings, send_task intake, the admin."""

import io

import pytest
from django.core.management import call_command
from django.test import override_settings

from celery_durable import DurableConfigError, checks, durable_task
from celery_durable.conf import get_settings
from celery_durable.models import Run
from tests.testapp import tasks


@pytest.mark.django_db
def test_migrations__match_the_models():
    out = io.StringIO()
    call_command("makemigrations", "celery_durable", "--check", "--dry-run", stdout=out)


def test_sqlite_without_immediate__is_an_error():
    databases = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}}
    ids = [m.id for m in checks.sqlite_messages(databases)]
    assert ids == ["celery_durable.E002", "celery_durable.W003"]


def test_sqlite_with_immediate_and_wal__passes():
    databases = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": "x.sqlite3",
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode = WAL;"},
        }
    }
    assert checks.sqlite_messages(databases) == []


def test_postgresql_without_prepared_statements__is_a_deploy_warning():
    plain = {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}
    binding_only = {**plain, "OPTIONS": {"server_side_binding": True}}
    prepared = {**plain, "OPTIONS": {"server_side_binding": True, "prepare_threshold": 5}}
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}
    databases = {"plain": plain, "binding_only": binding_only, "prepared": prepared, "sqlite": sqlite}
    messages = checks.postgresql_messages(databases)
    assert [(m.id, m.msg.split("'")[1]) for m in messages] == [
        ("celery_durable.W012", "plain"),
        ("celery_durable.W012", "binding_only"),
    ]


def test_prepared_statements_check__advises_nothing_with_psycopg2():
    plain = {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}
    assert checks.postgresql_messages({"default": plain}, psycopg3=False) == []


def test_prepared_statements_check__runs_with_check_deploy_only():
    from django.core.checks.registry import registry

    assert checks.check_postgresql_prepared in registry.get_checks(include_deployment_checks=True)
    assert checks.check_postgresql_prepared not in registry.get_checks(include_deployment_checks=False)


def test_invalid_settings__are_reported_by_a_check():
    with override_settings(CELERY_DURABLE={"LEASE_SECONDS": -1}):
        assert [m.id for m in checks.check_settings()] == ["celery_durable.E001"]
    with override_settings(CELERY_DURABLE={"LEASE_SECONDS": 5, "HEARTBEAT_SECONDS": 10}):
        assert [m.id for m in checks.check_settings()] == ["celery_durable.E001"]
    with override_settings(CELERY_DURABLE={"NO_SUCH_KEY": 1}), pytest.raises(DurableConfigError, match="NO_SUCH_KEY"):
        get_settings()


def test_durable_task_without_acks_late__is_an_error():
    from celery import current_app

    @current_app.task(name="t.check_acks", base=tasks.add.__class__.__mro__[1], acks_late=False)
    def no_acks():
        return 1

    try:
        assert [m.id for m in checks.check_celery()] == ["celery_durable.E004"]
    finally:
        current_app.tasks.pop("t.check_acks")


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"retries": -1}, "retries"),
        ({"retry_backoff": "fast"}, "retry_backoff"),
        ({"retry_jitter": 1}, "retry_jitter"),
        ({"concurrency": object()}, "'concurrency'"),
        ({"autoretry_for": None}, "autoretry_for"),
        ({"priority": "high"}, "'priority'"),
    ],
)
def test_invalid_decorator_option__fails_at_import_naming_task_and_option(options, fragment):
    with pytest.raises(DurableConfigError) as info:

        @durable_task(name="t.invalid", **options)
        def invalid():
            return None

    assert "t.invalid" in str(info.value)
    assert fragment in str(info.value)


def test_invalid_option_on_app_task_with_base__fails_too():
    from celery import current_app

    from celery_durable import DurableTask

    with pytest.raises(DurableConfigError, match=r"t\.invalid_base"):

        @current_app.task(name="t.invalid_base", base=DurableTask, retries=-3, lazy=False)
        def invalid():
            return None


@pytest.mark.django_db
def test_send_task_by_name__records_the_run():
    from celery import current_app

    result = current_app.send_task("t.add", args=(2, 3), queue="orders")
    run = Run.objects.get(id=result.id)
    assert run.task_name == "t.add"
    assert run.args_value == [2, 3]
    assert run.wake_at is None
    assert '"orders"' in run.options  # later publications go to the same queue


@pytest.mark.django_db
def test_send_task_with_a_countdown__waits_in_the_database():
    from celery import current_app

    result = current_app.send_task("t.add", args=(2, 3), countdown=3600)
    assert Run.objects.get(id=result.id).wake_at is not None


@pytest.mark.django_db
def test_admin__lists_and_shows_runs(admin_client, durable):
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    listing = admin_client.get("/admin/celery_durable/run/", {"q": run.id})
    assert listing.status_code == 200
    assert run.id in listing.content.decode()
    page = admin_client.get(f"/admin/celery_durable/run/{run.id}/change/")
    assert page.status_code == 200
    assert "three" in page.content.decode()
