"""Real ``celery worker`` processes on real brokers, sharing the test database (PostgreSQL)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.db import connection

from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[2]
BROKERS = {
    "redis": os.environ.get("DURABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/7"),
    "rabbitmq": os.environ.get("DURABLE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
E2E_SETTINGS = {
    "DURABLE_TEST_LEASE_SECONDS": "4",
    "DURABLE_TEST_HEARTBEAT_SECONDS": "1",
    "DURABLE_TEST_WAKER_INTERVAL": "0.5",
    "DURABLE_TEST_REPUBLISH_AFTER": "3",
}


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=2):
            return True
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Worker:
    """A ``celery worker`` subprocess in its own session (so the whole tree can be killed)."""

    def __init__(
        self, env: dict, log: Path, name: str, pool: str = "prefork", concurrency: int = 2, options: tuple = ()
    ):
        self.log = log
        self.name = name
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            # The node name carries the test's queue: suites running side by side on one broker
            # (and a worker restarted under its old name) never share a pidbox queue.
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            f"{name}-{env['DURABLE_TEST_QUEUE']}@%h",
            "-l",
            "info",
            "--without-mingle",
            "--without-gossip",
            "-Q",
            env["DURABLE_TEST_QUEUE"],
            *options,
        ]
        self.handle = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log.read_text()[-3000:]}")
            return " ready." in self.log.read_text()

        wait_for(ready, timeout, f"worker {self.name} to be ready")

    def kill(self) -> None:
        """SIGKILL the worker and all its pool processes, and reap them."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.handle.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()


@pytest.fixture(params=sorted(BROKERS))
def broker(request):
    url = BROKERS[request.param]
    if not reachable(url):
        service_unavailable(f"{request.param} broker at {url} is unreachable")
    return url


@pytest.fixture
def e2e_env(broker, transactional_db, tmp_path, settings):
    if connection.vendor != "postgresql":
        service_unavailable("e2e tests share the test database with workers: run them with DURABLE_TEST_DB=postgres")
    from celery import current_app

    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **E2E_SETTINGS,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DURABLE_TEST_DB": "postgres",
        "DURABLE_TEST_PG_NAME": connection.settings_dict["NAME"],
        "DURABLE_TEST_BROKER_URL": broker,
        "DURABLE_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
    }
    # The test process publishes to the same broker as its workers (tests pass queue=).
    previous = current_app.conf.broker_url
    current_app.conf.broker_url = broker
    reset_producer_pool(current_app)
    settings.CELERY_DURABLE = {
        "LEASE_SECONDS": 4,
        "HEARTBEAT_SECONDS": 1,
        "WAKER_INTERVAL": 0.5,
        "REPUBLISH_AFTER_SECONDS": 3,
    }
    yield {"env": env, "dir": tmp_path, "queue": queue}
    current_app.conf.broker_url = previous
    reset_producer_pool(current_app)


def reset_producer_pool(app) -> None:
    """Drop the app's cached pools so the next publish connects to ``conf.broker_url``.

    kombu keeps one pool per broker URL process-wide, so switching back reuses it.
    """
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def workers(e2e_env):
    started: list[Worker] = []

    def start(name: str, **kwargs) -> Worker:
        worker = Worker(e2e_env["env"], e2e_env["dir"] / f"{name}.log", name, **kwargs)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
