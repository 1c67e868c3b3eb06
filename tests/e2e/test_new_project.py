"""A new user's first hour, end to end: a fresh virtualenv, ``pip install celery-durable[postgres,redis]``,
``django-admin startproject``, the quickstart's settings and code, ``migrate`` on a new PostgreSQL
database, a worker on Redis, one run to completion, and the admin page of that run."""

import subprocess
import sys
import uuid

import pytest

from tests.conftest import service_unavailable
from tests.e2e.conftest import reachable
from tests.e2e.processes import fresh_pg_database, spawn  # noqa: F401  (fixtures)
from tests.e2e.test_quickstart import run_rows, start_worker
from tests.quickstart import REDIS, ROOT, build, clean_env, environment_settings, run, run_id, run_session

pytestmark = pytest.mark.e2e

ADMIN_PAGE = """
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment

setup_test_environment()
user = get_user_model().objects.create_superuser("admin", "admin@example.com", "not-a-secret")
client = Client()
client.force_login(user)
run_id = {run_id!r}
response = client.get(f"/admin/celery_durable/run/{{run_id}}/change/")
print("status", response.status_code)
print(response.content.decode())
"""


@pytest.fixture
def venv(tmp_path):
    """A fresh virtualenv with this checkout installed as a user would: ``pip install <repo>[postgres,redis]``."""
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    try:
        run([*pip, "install", f"{ROOT}[postgres,redis,results]"], tmp_path, clean_env(), timeout=900)
    except AssertionError as exc:
        if "Could not find a version" in str(exc) or "Failed to establish a new connection" in str(exc):
            service_unavailable(f"the package index is unreachable: {str(exc)[-500:]}")
        raise
    return path


def test_new_project__install_settings_migrate_worker_run_admin(tmp_path, venv, spawn, fresh_pg_database):  # noqa: F811
    if not reachable(REDIS):
        service_unavailable(f"Redis at {REDIS} is unreachable")
    python = str(venv / "bin" / "python")
    # The package is the installed one, not this checkout's source tree.
    where = run([python, "-c", "import celery_durable; print(celery_durable.__file__)"], tmp_path, clean_env())
    assert str(venv) in where, where
    queue = f"new-project-{uuid.uuid4().hex[:8]}"
    root = build(
        tmp_path / "project",
        python,
        environment_settings(fresh_pg_database, queue),
        startproject=[str(venv / "bin" / "django-admin"), "startproject"],
    )
    env = clean_env()
    run([python, "manage.py", "migrate"], root, env)
    checked = run([python, "manage.py", "check"], root, env)
    assert "celery_durable." not in checked, checked
    command = [str(venv / "bin" / "celery"), "-A", "proj", "worker", "-l", "info", "-n", f"{queue}@%h"]
    worker = start_worker(spawn, root, python, env, command)
    rid = run_id(run_session(root, python, env))
    assert run_rows(fresh_pg_database, rid) == (
        "completed",
        [("reserve", "completed", 1), ("charge", "completed", 1), ("receipt", "completed", 1)],
    )
    assert "ERROR" not in worker.output(), worker.output()

    page = run([python, "manage.py", "shell", "-c", ADMIN_PAGE.format(run_id=rid)], root, env)
    assert "status 200" in page, page[-3000:]
    assert rid in page
    for step_id in ("reserve", "charge", "receipt"):
        assert step_id in page
