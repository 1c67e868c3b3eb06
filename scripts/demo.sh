#!/usr/bin/env bash
# The zero-setup demo of celery-durable: nothing to install or start besides this repo.
#
#   bash scripts/demo.sh [--timeout SECONDS]
#
# Sets up .venv, migrates example_project's SQLite database (example_project/var/), then
# runs `manage.py durable_demo`: real Celery workers on kombu's filesystem transport, a
# worker SIGKILLed in the middle of a run, and the run resumed by a fresh worker.
# EXAMPLE_DATABASE_URL / EXAMPLE_BROKER_URL / EXAMPLE_VAR_DIR point it elsewhere
# (see example_project/example_project/settings.py).
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p var
echo "==> setting up .venv with scripts/setup.sh (a minute the first time; log: var/setup.log)"
if ! bash scripts/setup.sh > var/setup.log 2>&1; then
    tail -n 40 var/setup.log >&2
    echo "scripts/setup.sh failed; full log in var/setup.log" >&2
    exit 1
fi

cd example_project
PYTHON=../.venv/bin/python
export DJANGO_SETTINGS_MODULE=example_project.settings

echo "==> migrating the example project's database"
"$PYTHON" manage.py migrate --noinput --verbosity 0
"$PYTHON" manage.py check --database default --fail-level WARNING

echo "==> running the demo (manage.py durable_demo)"
exec "$PYTHON" manage.py durable_demo "$@"
