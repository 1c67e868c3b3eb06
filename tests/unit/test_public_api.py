import ast
import os
import subprocess
import sys

import celery_durable

EXPECTED = [
    "install",
    "durable_task",
    "DurableTask",
    "step",
    "Concurrency",
    "Throttle",
    "RateLimit",
    "Debounce",
    "Singleton",
    "CancelOn",
    "Timeouts",
    "Batch",
    "batch_run",
    "Event",
    "send_event",
    "get_run",
    "cancel",
    "replay",
    "fork",
    "InvalidMetadata",
    "pause",
    "resume",
    "explain",
    "set_limit",
    "DurableError",
    "DurableConfigError",
    "SerializationError",
    "NotInDurableRun",
    "NonRetriableError",
    "RetryAfter",
    "NonDeterminismError",
    "RunNotFound",
    "RunSkipped",
    "RunStateError",
    "DirectCallError",
    "StepNotFound",
    "RunCancelled",
    "ChildRunFailed",
    "DurableNotMigrated",
    "RetryPolicy",
    "StepTimeout",
    "Schedule",
    "ScheduleError",
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


# Modules that turn bytes into objects (or run code) and calls that evaluate strings.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "yaml"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def _unsafe_uses(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
                found.append(f"{func.id}()")
            elif isinstance(func, ast.Attribute) and func.attr in UNSAFE_CALLS | {"loads", "load", "unsafe_load"}:
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if owner in UNSAFE_MODULES or owner == "builtins":
                    found.append(f"{owner}.{func.attr}()")
        elif isinstance(node, ast.Constant) and node.value in ("pickle", "yaml", "msgpack"):  # a serializer name
            found.append(repr(node.value))
    return [f"{os.path.relpath(path)}:{use}" for use in found]


def test_package__never_uses_pickle_eval_exec_marshal_or_yaml():
    root = os.path.dirname(celery_durable.__file__)
    offenders = []
    for folder, _dirs, files in os.walk(root):
        offenders += [use for name in files if name.endswith(".py") for use in _unsafe_uses(os.path.join(folder, name))]
    assert offenders == []


def test_unsafe_use_check__catches_each_kind(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pickle\nfrom yaml import load\nimport marshal as m\n"
        "eval('1')\nexec('x = 1')\n__import__('os')\nyaml.load(s)\nbuiltins.eval('1')\n"
        "app.conf.task_serializer = 'pickle'\n"
    )
    assert len(_unsafe_uses(str(sample))) == 9
