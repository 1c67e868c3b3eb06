"""A worker of a Celery app whose durable tasks run without ``install(app)`` says so at startup."""

import uuid

import pytest

from tests.conftest import service_unavailable
from tests.e2e.conftest import BROKERS, reachable, wait_for
from tests.e2e.processes import spawn  # noqa: F401  (fixture)
from tests.miniproject import PYTHON, project_env, write_project

pytestmark = pytest.mark.e2e


def start_worker(spawn, root, name):  # noqa: F811
    queue = f"guard-{uuid.uuid4().hex[:8]}"
    command = [
        PYTHON, "-m", "celery", "-A", "proj", "worker", "-P", "solo", "-l", "info", "-n", f"{name}-{queue}@%h",
        "--without-mingle", "--without-gossip", "-Q", queue,
    ]  # fmt: skip
    worker = spawn(command, root, project_env(root), root / f"{name}.log")

    def ready():
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{worker.output()[-3000:]}")
        return " ready." in worker.output()

    wait_for(ready, 60, "the worker to be ready")
    return worker


@pytest.mark.parametrize("install", [False, True], ids=["without-install", "with-install"])
def test_worker_start__logs_an_error_when_install_is_missing(spawn, tmp_path, install):  # noqa: F811
    broker = BROKERS["redis"]
    if not reachable(broker):
        service_unavailable(f"redis broker at {broker} is unreachable")
    root = write_project(tmp_path, install=install, broker=broker)
    log = start_worker(spawn, root, "guard").output()
    lines = [line for line in log.splitlines() if "celery_durable.install(app) was not called" in line]
    if install:
        assert lines == [], log
    else:
        assert len(lines) == 1, log
        assert "ERROR" in lines[0]
        assert "shop.tasks.doubled" in lines[0]
        assert "'proj'" in lines[0]
        assert "default app" not in lines[0]
