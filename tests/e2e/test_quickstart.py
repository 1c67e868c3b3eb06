"""The quickstart's code as written (docs/quickstart.md): a new project, migrate, a worker, the session."""

import sys
import uuid

import pytest

from tests.conftest import service_unavailable
from tests.e2e.conftest import reachable, wait_for
from tests.e2e.processes import fresh_pg_database, spawn  # noqa: F401  (fixtures)
from tests.quickstart import REDIS, build, clean_env, environment_settings, pg_connect, run, run_id, run_session

pytestmark = pytest.mark.e2e


def start_worker(spawn, root, python, env, command):  # noqa: F811
    worker = spawn(command, root, env, root / "worker.log")

    def ready():
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited:\n{worker.output()[-3000:]}")
        return " ready." in worker.output()

    wait_for(ready, 90, "the worker to be ready")
    return worker


def run_rows(database, run_id_):
    with pg_connect(database) as conn:
        status = conn.execute("SELECT status FROM celery_durable_run WHERE id = %s", [run_id_]).fetchone()
        steps = conn.execute(
            "SELECT step_id, status, attempts FROM celery_durable_step WHERE run_id = %s ORDER BY id", [run_id_]
        ).fetchall()
    return status[0] if status else None, steps


def test_quickstart_as_written__runs_on_a_new_project(tmp_path, spawn, fresh_pg_database):  # noqa: F811
    if not reachable(REDIS):
        service_unavailable(f"Redis at {REDIS} is unreachable")
    python = sys.executable
    queue = f"quickstart-{uuid.uuid4().hex[:8]}"
    root = build(tmp_path / "project", python, environment_settings(fresh_pg_database, queue))
    env = clean_env()
    run([python, "manage.py", "migrate"], root, env)
    checked = run([python, "manage.py", "check"], root, env)
    assert "celery_durable." not in checked, checked
    # `celery -A proj worker -l info`, as the quickstart says (and a node name of its own).
    worker = start_worker(
        spawn, root, python, env, [python, "-m", "celery", "-A", "proj", "worker", "-l", "info", "-n", f"{queue}@%h"]
    )
    output = run_session(root, python, env)
    rid = run_id(output)
    assert run_rows(fresh_pg_database, rid) == (
        "completed",
        [("reserve", "completed", 1), ("charge", "completed", 1), ("receipt", "completed", 1)],
    )
    assert "ERROR" not in worker.output(), worker.output()
