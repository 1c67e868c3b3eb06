"""``install(app)`` forgotten: system check E010, found without relying on which modules were imported."""

import subprocess

from celery_durable import checks
from celery_durable.integration import guard
from tests.miniproject import PYTHON, project_env, write_project


def manage_check(root) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "django", "check"],
        cwd=root,
        env=project_env(root),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_celery_app_without_install__is_error_e010(monkeypatch):
    from celery._state import get_current_app

    # The suite's own app, as it would be had tests/celery_app.py not called install(app).
    # (A new Celery app would pick up every shared task other tests declared, invalid ones too.)
    app = get_current_app()
    monkeypatch.setattr(app, "_celery_durable_installed", False)
    messages = checks.check_celery()
    assert [m.id for m in messages] == ["celery_durable.E010"]
    assert "install(app) was not called" in messages[0].msg
    assert "install(app)" in messages[0].hint
    assert "t.add" in guard.durable_task_names(app)
    assert not guard.installed(app)


def test_installed_app__has_no_e010():
    from celery._state import get_current_app

    app = get_current_app()  # tests/celery_app.py calls install(app)
    assert guard.installed(app)
    assert guard.durable_task_names(app)
    assert "celery_durable.E010" not in [m.id for m in checks.check_celery()]


def test_manage_py_check__finds_durable_tasks_in_modules_nothing_imported(tmp_path):
    # The durable task lives in shop/tasks.py; nothing imports it when `manage.py check` runs.
    root = write_project(tmp_path, install=False)
    done = manage_check(root)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "celery_durable.E010" in done.stderr
    assert "shop.tasks.doubled" in done.stderr
    assert "celery_durable.install(app)" in done.stderr
    assert "default app" not in done.stderr


def test_manage_py_check__passes_once_install_is_called(tmp_path):
    root = write_project(tmp_path, install=True)
    done = manage_check(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "celery_durable.E010" not in done.stdout + done.stderr


def test_manage_py_check__celery_app_never_imported_by_django(tmp_path):
    # install(app) is called in proj/celery.py, but proj/__init__.py does not import it: Django
    # processes (and their .delay()) use Celery's default app, which has no install(app).
    root = write_project(tmp_path, install=True, import_app=False)
    done = manage_check(root)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "celery_durable.E010" in done.stderr
    assert "from .celery import app as celery_app" in done.stderr
    assert "Celery's default app" in done.stderr
