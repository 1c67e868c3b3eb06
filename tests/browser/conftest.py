"""The admin served by ``django-admin runserver`` on 127.0.0.1, driven by Debian's Chromium.

The server is a subprocess on the test database (a file SQLite database, or the PostgreSQL
or MariaDB test database): data the test commits is what the browser sees. The server is
killed and reaped when the test ends. Chromium is the system package
(``/usr/bin/chromium``), never a browser downloaded by Playwright.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DURABLE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict:
    """Environment that points the server at the database this test process uses."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.browser.settings", "PYTHONPATH": str(ROOT)}
    name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        env["DURABLE_TEST_SQLITE"] = str(name)
    elif connection.vendor == "postgresql":
        env["DURABLE_TEST_PG_NAME"] = name
    elif connection.vendor == "mysql":
        env["DURABLE_TEST_MYSQL_NAME"] = name
    return env


class AdminServer:
    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.handle = log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "runserver",
                f"127.0.0.1:{self.port}",
                "--noreload",
                "--insecure",
                "--skip-checks",
            ],
            cwd=ROOT,
            env=server_env(),
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"admin server exited early:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise AssertionError(f"admin server not listening after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.handle.close()


@pytest.fixture
def admin_server(transactional_db, tmp_path):
    server = AdminServer(tmp_path / "runserver.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _release_test_database(django_db_setup, django_db_blocker):
    """End stray sessions on the PostgreSQL test database before pytest-django drops it.

    Playwright's sync API switches greenlets, and Django's per-context connections then
    leave this process with a second, idle session that would block ``DROP DATABASE``.
    """
    yield
    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def browser(monkeypatch):
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        service_unavailable(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_unavailable("the playwright Python package is not installed (pip install playwright)")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # between browser steps are ordinary synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
