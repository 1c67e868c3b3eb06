import os
import subprocess
import sys

import celery_durable

EXPECTED = [
    "install", "durable_task", "DurableTask", "step",
    "Concurrency", "Throttle", "RateLimit", "Debounce", "Singleton", "CancelOn", "Timeouts",
    "Event", "send_event", "get_run", "cancel", "replay",
    "DurableError", "DurableConfigError", "SerializationError", "NotInDurableRun", "NonRetriableError",
    "RetryAfter", "NonDeterminismError", "RunNotFound", "RunSkipped", "RunCancelled", "ChildRunFailed",
]


def test_all__is_pinned():
    assert sorted(celery_durable.__all__) == sorted(EXPECTED)
    assert len(set(celery_durable.__all__)) == len(celery_durable.__all__)
    for name in EXPECTED:
        assert getattr(celery_durable, name) is not None


def test_import__needs_no_django_settings():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = "import celery_durable, sys; assert 'celery_durable.models' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_package__never_uses_pickle():
    root = os.path.dirname(celery_durable.__file__)
    offenders = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                if "import pickle" in text or "pickle.loads" in text or "'pickle'" in text:
                    offenders.append(path)
    assert offenders == []
