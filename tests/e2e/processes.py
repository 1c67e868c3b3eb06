"""Subprocesses of e2e tests that are not the suite's own workers: started in their own session,
logging to a file, and always killed and reaped by the fixture that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest


class Spawned:
    """One command in its own session (so its whole process tree can be signalled)."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left; reap the leader."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.handle.close()


@pytest.fixture
def spawn():
    """``spawn(command, cwd, env, log)`` -> :class:`Spawned`; every one is stopped and reaped at teardown."""
    started: list[Spawned] = []

    def start(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Spawned:
        spawned = Spawned(command, cwd, env, log)
        started.append(spawned)
        return spawned

    yield start
    for spawned in reversed(started):
        spawned.stop()


@pytest.fixture
def fresh_pg_database():
    """A new, empty PostgreSQL database named for this test; dropped at teardown."""
    import uuid

    from tests.conftest import service_unavailable
    from tests.quickstart import pg_connect

    name = f"durable_new_{uuid.uuid4().hex[:10]}"
    try:
        admin = pg_connect()
    except Exception as exc:
        service_unavailable(f"PostgreSQL is unreachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
