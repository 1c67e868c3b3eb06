"""The zero-setup demo: ``manage.py durable_demo`` of example_project passes on SQLite and kombu's
filesystem transport, with real worker subprocesses, one of them SIGKILLed mid-run, and runs
that suspend (a durable sleep, a wait resumed by an event, a gather of child runs).

It runs the same commands as ``scripts/demo.sh`` (minus the venv set-up), with the example
project's SQLite database, broker folders and logs in a temporary directory. No Redis,
RabbitMQ or PostgreSQL involved.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[2] / "example_project"


def run(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a manage.py command; on timeout, SIGTERM it (it stops its workers), then SIGKILL."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"manage.py {' '.join(args)} timed out after {timeout}s:\n{output}")
    return process.returncode, output


def is_demo_worker(pid: int) -> bool:
    """Whether ``pid`` is still a celery worker of the example project."""
    try:
        return b"example_project" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to "does the pid exist"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def demo_env(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXAMPLE_")}
    env.update(
        DJANGO_SETTINGS_MODULE="example_project.settings",
        EXAMPLE_VAR_DIR=str(tmp_path / "var"),
        PYTHONUNBUFFERED="1",
    )
    return env


def test_durable_demo__resumes_the_crashed_run_and_passes(demo_env, tmp_path):
    code, output = run(["migrate", "--noinput", "--verbosity", "0"], demo_env, 120)
    assert code == 0, output
    code, output = run(["check", "--database", "default", "--fail-level", "WARNING"], demo_env, 60)
    assert code == 0, output
    assert "celery_durable" not in output

    code, output = run(["durable_demo", "--timeout", "150"], demo_env, 180)

    assert code == 0, output
    assert str(tmp_path / "var" / "db.sqlite3") in output  # the temporary database, not the repo's
    assert re.search(r"worker demo-1 \(pid \d+\) died: exit code -9 \(SIGKILL\)", output), output
    assert re.search(r"run \S+ resumed and completed", output), output
    # Runs that suspend: a durable sleep, an event-resumed wait, a gather.
    assert re.search(r"run is sleeping until .+? \(step 'billing-date'\): lease_owner=None", output), output
    assert re.search(r"bob@example.com's run is waiting for 'user.confirmed'", output), output
    assert re.search(r'send_event\("user.confirmed", .*\) from this command -> event \w+', output), output
    assert re.search(r"collect_invoice INV-\S+ -> .*\"status\": \"paid\".*\"attempts\": 3", output), output
    assert re.search(r"onboard_user bob@example.com -> .*\"status\": \"active\"", output), output
    assert re.search(r"onboard_user carol@example.com -> .*\"status\": \"expired\"", output), output
    assert "step.gather returned ['1080p', '720p', '480p', 'thumbnail'], the order asked" in output, output
    assert "invoice.paid started notify_accounting (on_event)" in output, output
    assert "sleeping and waiting runs hold no worker" in output, output
    assert "FAIL" not in output
    assert "demo passed" in output
    pids = [int(pid) for pid in re.findall(r"starting worker demo-\d: pid (\d+)", output)]
    assert len(pids) == 2, output
    assert not [pid for pid in pids if is_demo_worker(pid)], "the demo left worker processes behind"


def test_durable_demo__sigterm_stops_its_workers(demo_env):
    code, output = run(["migrate", "--noinput", "--verbosity", "0"], demo_env, 120)
    assert code == 0, output
    process = subprocess.Popen(
        [sys.executable, "manage.py", "durable_demo"],
        cwd=PROJECT,
        env=demo_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "worker demo-1 is ready" in line:
                process.send_signal(signal.SIGTERM)
                break
        output = "".join(lines) + process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, output
    assert "demo interrupted" in output
    pids = [int(pid) for pid in re.findall(r"starting worker demo-\d: pid (\d+)", output)]
    assert pids, output
    assert not [pid for pid in pids if is_demo_worker(pid)], "an interrupted demo left worker processes behind"
