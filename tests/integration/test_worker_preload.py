"""A prefork worker imports the execution's modules before it forks its pool processes."""

import json
import os
import subprocess
import sys

from django.conf import settings

MODULES = ("celery_durable.engine.execution", "celery_durable.integration.services")

# A fresh interpreter: in this one the modules were imported long ago.
SCRIPT = f"""
import json, sys
import django
django.setup()
from celery import signals
import tests.celery_app  # the suite's app: its install(app) connects the handler
before = [m in sys.modules for m in {MODULES!r}]
signals.worker_before_create_process.send(sender=None)  # what the prefork pool sends before each fork
print(json.dumps({{"before": before, "after": [m in sys.modules for m in {MODULES!r}]}}))
"""


def test_worker_before_forking_a_pool_process__has_imported_the_execution_modules():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"before": [False, False], "after": [True, True]}
