"""The quickstart's code, as written in docs/quickstart.md, turned into a project on disk.

Code blocks whose first line is ``# <path>`` (``# proj/settings.py  (add to the end)``) are
files of the project: ``proj/settings.py`` blocks are appended to what ``startproject``
wrote, the others replace the file. The ``pycon`` block is the session to run (a doctest
whose run ids may differ).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
FILES = ("proj/settings.py", "proj/celery.py", "proj/__init__.py", "shop/tasks.py")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def blocks() -> tuple[dict[str, list[str]], str]:
    """``({path: [code, ...]}, pycon session)`` from the quickstart (top-level fences only)."""
    files: dict[str, list[str]] = {}
    sessions = []
    for language, code in FENCE.findall(QUICKSTART.read_text()):
        first = code.splitlines()[0] if code else ""
        if language == "python" and first.startswith("# "):
            path = first[2:].split()[0]
            if path in FILES:
                files.setdefault(path, []).append(code)
        elif language == "pycon":
            sessions.append(code)
    assert sorted(files) == sorted(FILES), f"quickstart blocks changed: {sorted(files)}"
    assert len(sessions) == 1, "the quickstart has one pycon session"
    return files, sessions[0]


def build(root: Path, python: str, settings: str, startproject: list[str] | None = None) -> Path:
    """``startproject proj`` + ``startapp shop`` in ``root``, then the quickstart's blocks.

    ``settings`` is appended last: what the quickstart leaves to the reader (the database,
    the broker, ``shop`` in ``INSTALLED_APPS``).
    """
    root.mkdir(parents=True, exist_ok=True)
    run([*(startproject or [python, "-m", "django", "startproject"]), "proj", str(root)], root)
    run([python, "manage.py", "startapp", "shop"], root)
    files, _ = blocks()
    for path, codes in files.items():
        target = root / path
        if path == "proj/settings.py":
            target.write_text(target.read_text() + "\n\n" + "\n\n".join(codes))
        else:
            target.write_text("\n\n".join(codes))
    settings_file = root / "proj" / "settings.py"
    settings_file.write_text(settings_file.read_text() + "\n\n# --- the test's environment ---\n" + settings)
    return root


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command to completion; its output, or an AssertionError carrying it."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


SESSION_SCRIPT = """
import doctest, re, sys

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

class Checker(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        return super().check_output(UUID.sub("<uuid>", want), UUID.sub("<uuid>", got), optionflags)

session = sys.stdin.read()
test = doctest.DocTestParser().get_doctest(session, {}, "quickstart", "docs/quickstart.md", 0)
runner = doctest.DocTestRunner(checker=Checker(), optionflags=doctest.NORMALIZE_WHITESPACE)
runner.run(test, clear_globs=False)
result = runner.summarize(verbose=False)
print(f"quickstart session: {result.attempted} examples, {result.failed} failed")
for name, value in test.globs.items():
    if name == "result":
        print(f"run id: {value.id}")
sys.exit(1 if result.failed or not result.attempted else 0)
"""


def run_session(root: Path, python: str, env: dict[str, str], timeout: float = 120) -> str:
    """Run the quickstart's pycon session as a doctest in ``manage.py shell`` (run ids may differ)."""
    _, session = blocks()
    done = subprocess.run(
        [python, "manage.py", "shell", "-c", SESSION_SCRIPT],
        cwd=root,
        env=env,
        input=session,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"the quickstart session failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_id(output: str) -> str:
    """The run id the session printed."""
    match = re.search(r"^run id: (\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


PG = {
    "USER": os.environ.get("DURABLE_TEST_PG_USER", "postgres"),
    "HOST": os.environ.get("DURABLE_TEST_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("DURABLE_TEST_PG_PORT", "5432"),
}
REDIS = os.environ.get("DURABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


def pg_connect(dbname: str = "postgres"):  # type: ignore[no-untyped-def]
    """An autocommit psycopg connection to the test server."""
    import psycopg

    return psycopg.connect(dbname=dbname, user=PG["USER"], host=PG["HOST"], port=PG["PORT"], autocommit=True)


def environment_settings(database: str, queue: str) -> str:
    """What the quickstart leaves to the reader: PostgreSQL, Redis, the ``shop`` app."""
    db = {"ENGINE": "django.db.backends.postgresql", "NAME": database, **PG}
    return (
        'INSTALLED_APPS += ["shop"]\n'
        f"DATABASES = {{'default': {db!r}}}\n"
        f"CELERY_BROKER_URL = {REDIS!r}\n"
        f"CELERY_TASK_DEFAULT_QUEUE = {queue!r}  # this test's own queue on a shared Redis\n"
    )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without the test suite's settings (the project brings its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_TEST", "DJANGO_", "PYTHONPATH"))}
    return {**env, **(extra or {})}
