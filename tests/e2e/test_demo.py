"""The zero-setup demo: ``manage.py durable_demo`` of example_project passes on SQLite and kombu's
filesystem transport, with real worker subprocesses, one of them SIGKILLed mid-run, runs
that suspend (a durable sleep, a wait resumed by an event, a gather of child runs), and
per-user concurrency with a paid upload jumping its user's backlog on two workers.

It runs the same commands as ``scripts/demo.sh`` (minus the venv set-up), with the example
project's SQLite database, broker folders and logs in a temporary directory. No Redis,
RabbitMQ or PostgreSQL involved.
"""

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from itertools import pairwise
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
    # Per-user concurrency with paid plans first (shop.transcode_video), on two workers.
    assert re.search(r"erin #1 \(free\): run \S+ is queued", output), output
    assert re.search(r"erin #4 \(pro\): run \S+ is pending", output), output
    assert re.search(r"frank #1 \(free\): run \S+ is queued", output), output
    assert (
        "erin's uploads started in the order ['erin #1 (free)', 'erin #4 (pro)', 'erin #2 (free)', 'erin #3 (free)']"
        in output
    ), output
    assert "erin's 4 uploads ran one at a time across two workers" in output, output
    assert "(no overlap)" in output, output
    assert "frank's upload was not held up by erin's backlog" in output, output
    assert "every slot was handed back: in use [0, 0]" in output, output
    assert "FAIL" not in output
    assert "demo passed" in output
    pids = [int(pid) for pid in re.findall(r"starting worker demo-\d: pid (\d+)", output)]
    assert len(pids) == 3, output
    assert not [pid for pid in pids if is_demo_worker(pid)], "the demo left worker processes behind"
    assert_one_transcode_per_user_paid_first(tmp_path / "var" / "db.sqlite3")


def assert_one_transcode_per_user_paid_first(database: Path) -> None:
    """The demo's own database: user 7's transcodes never overlapped, and the paid one went second."""
    with contextlib.closing(sqlite3.connect(database)) as connection:  # "with connect()" does not close it
        rows = connection.execute(
            "SELECT args, priority, status, started_at, finished_at FROM celery_durable_run "
            "WHERE task_name = 'shop.transcode_video' ORDER BY started_at"
        ).fetchall()
    runs = [
        (json.loads(args), priority, status, started, finished) for args, priority, status, started, finished in rows
    ]
    assert len(runs) == 5 and {status for *_, status, _, _ in runs} == {"completed"}, runs
    erin = [run for run in runs if run[0][1] == 7]
    assert [(args[2], priority) for args, priority, *_ in erin] == [("free", 0), ("pro", 600), ("free", 0), ("free", 0)]
    # ISO timestamps of one host's clock: each run started after the one before it finished.
    assert all(later[3] >= earlier[4] for earlier, later in pairwise(erin)), erin
    with contextlib.closing(sqlite3.connect(database)) as connection:  # "with connect()" does not close it
        in_use = connection.execute(
            "SELECT in_use FROM celery_durable_slot WHERE key LIKE 'shop.transcode_video:%'"
        ).fetchall()
    assert in_use == [(0,), (0,)]


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
