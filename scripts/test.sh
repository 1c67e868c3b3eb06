#!/usr/bin/env bash
# Run the test suite: lint, the guard mutations (tests/guards.toml), then one old and one new cell of the nox matrix
# (Python 3.11 x Django 5.2, Python 3.13 x Django 6.1), each on SQLite, PostgreSQL and
# MariaDB; the newest cell also runs the e2e and chaos tests (real workers on Redis and
# RabbitMQ) on PostgreSQL (noxfile.py, WORKER_CELL); the oldest runs PostgreSQL with prepared
# statements, the newest with Django's default binding.
# Unreachable services are skipped with a reason, unless CELERY_DURABLE_REQUIRE_SERVICES=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# With pyenv, make every installed Python 3.11-3.13 visible to nox (python3 stays as it is).
if command -v pyenv >/dev/null 2>&1 && [ -z "${PYENV_VERSION:-}" ]; then
    PYENV_VERSION="$(pyenv version-name)"
    for version in $(pyenv versions --bare | grep -E '^3\.1[123]\.[0-9]+$'); do
        PYENV_VERSION="$PYENV_VERSION:$version"
    done
    export PYENV_VERSION
fi
.venv/bin/nox -s lint guards "tests(python='3.11', django='5.2')" "tests(python='3.13', django='6.1')" -- "$@"
