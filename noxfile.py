"""The test matrix: Python x Django, each cell over SQLite, PostgreSQL and MariaDB.

``nox -s tests`` runs every cell; ``scripts/test.sh`` (the README's test command, also what
CI runs) picks one old and one new cell. Set CELERY_DURABLE_REQUIRE_SERVICES=1 to make an
unreachable database or broker, or a missing Python of the matrix, a failure instead of a skip.
"""

import os
import socket

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

CELLS = [("3.11", "5.2"), ("3.12", "5.2"), ("3.12", "6.1"), ("3.13", "5.2"), ("3.13", "6.1")]
# The real-worker suites (tests/e2e, tests/chaos: ~15 of a cell's ~25 minutes on 2 cores) run
# in the newest cell only; the others run unit, integration and browser tests on every database.
WORKER_CELL = CELLS[-1]
SERVICES = {"postgres": ("127.0.0.1", 5432), "mysql": ("127.0.0.1", 3306)}
REQUIRE = os.environ.get("CELERY_DURABLE_REQUIRE_SERVICES") == "1"
if REQUIRE:
    # nox skips a session whose interpreter is missing unless CI is set in its environment;
    # a run that requires its services requires every Python of the matrix too.
    nox.options.error_on_missing_interpreters = True


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def databases(session: nox.Session) -> list[str]:
    chosen = ["sqlite"]
    for name, address in SERVICES.items():
        if reachable(*address):
            chosen.append(name)
        elif REQUIRE:
            session.error(f"{name} at {address[0]}:{address[1]} is unreachable (CELERY_DURABLE_REQUIRE_SERVICES=1)")
        else:
            session.warn(f"SKIPPED: {name} tests, {address[0]}:{address[1]} is unreachable")
    return chosen


@nox.session
@nox.parametrize("python,django", CELLS)
def tests(session: nox.Session, django: str) -> None:
    """Unit tests, integration and browser tests per database; e2e and chaos (``WORKER_CELL``) on PostgreSQL.

    The oldest cell runs on PostgreSQL with prepared statements (``DURABLE_TEST_PG_PREPARED=1``),
    the others with Django's default client-side binding.
    """
    session.install("-e", ".[dev]", f"django~={django}.0")
    session.run("python", "-c", "import django, celery; print('django', django.__version__, celery.__version__)")
    extra = session.posargs
    session.run("pytest", "tests/unit", *extra, env={"DURABLE_TEST_DB": "sqlite"})
    for db in databases(session):
        paths = ["tests/integration", "tests/browser"]
        newest = (session.python, django) == WORKER_CELL
        e2e = db == "postgres" and newest and not os.environ.get("CELERY_DURABLE_SKIP_E2E")
        if e2e:
            paths.append("tests/e2e")
        env = {"DURABLE_TEST_DB": db}
        if db == "postgres" and (session.python, django) == CELLS[0]:
            # Parameters bound on the server and repeated statements prepared, the connection
            # settings docs/howto/deploy.md recommends; the newest cell runs Django's default.
            env["DURABLE_TEST_PG_PREPARED"] = "1"
        session.run("pytest", *paths, *extra, env=env)
        if e2e:
            # The chaos suite's short form (both brokers, ~2 min) in a process of its own: it
            # restarts PostgreSQL, Redis and RabbitMQ, which no other suite's fixtures expect.
            session.run("pytest", "tests/chaos", *extra, env={"DURABLE_TEST_DB": db})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, mypy, the import contracts, migrations and the docs build."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "celery_durable")
    session.run("mypy", "celery_durable")
    session.run("lint-imports")  # the layers of docs/architecture.md (contracts in pyproject.toml)
    session.run("mkdocs", "build", "--strict", "--quiet", "--site-dir", "var/site")


@nox.session(python="3.11")
def guards(session: nox.Session) -> None:
    """Remove each guard of tests/guards.toml in turn; fail if its tests still pass (every database)."""
    session.install("-e", ".[dev]")
    session.run("python", "scripts/guard_mutations.py", "--check")
    # Every database at once, each mutating a copy of the tree of its own.
    session.run("python", "scripts/guard_mutations.py", f"--databases={','.join(databases(session))}")
