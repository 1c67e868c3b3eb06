"""Remove each guard of ``tests/guards.toml`` in turn and check that its tests catch it.

    .venv/bin/python scripts/guard_mutations.py [--check] [--databases=sqlite,postgres,mysql] [ID-PREFIX ...]

For each guard: the source file gets the mutant text instead of the guard, the guard's
tests run (pytest), and the file is restored. A guard is *killed* when pytest reports
failures and none of its tests passed (a test skipped on this database counts neither way).
``--check`` only verifies that every guard's source text occurs exactly once in its file and
that every test file exists. Exit status 1 when a mutant survives or the manifest is stale.

Each database (``--databases``, default ``$DURABLE_TEST_DB`` or ``sqlite``) mutates a copy of
the tree of its own, so the databases run at the same time and the checkout is never
mutated. The mutants of one database share one test database (pytest-django's
``--reuse-db``): a mutant changes code, never the schema, so migrating once instead of once
per mutant keeps the run short. A run that timed out may have left rows behind, so the next
one creates the database afresh; the database is dropped at the end. Before the mutants, a
control run of every chosen guard's tests on the unmutated copy must pass: a test that fails
without its mutant would make the mutant look killed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "guards.toml"
# What pytest needs of the checkout (pyproject.toml: pythonpath ".", "example_project").
TREE = ["celery_durable", "tests", "example_project", "pyproject.toml"]


def load() -> list[dict[str, object]]:
    """The guards of the manifest."""
    with MANIFEST.open("rb") as handle:
        guards: list[dict[str, object]] = tomllib.load(handle)["guard"]
    return guards


def problems(guard: dict[str, object]) -> list[str]:
    """What is stale about one guard's entry (empty when it is exact)."""
    found = []
    path = ROOT / str(guard["file"])
    if not path.exists():
        return [f"{guard['id']}: no file {guard['file']}"]
    count = path.read_text().count(str(guard["source"]))
    if count != 1:
        found.append(f"{guard['id']}: source text occurs {count} times in {guard['file']}")
    if guard["source"] == guard["mutant"]:
        found.append(f"{guard['id']}: the mutant is the source")
    for node in guard["tests"]:  # type: ignore[attr-defined]
        test_file, _, name = str(node).partition("::")
        if not (ROOT / test_file).exists():
            found.append(f"{guard['id']}: no test file for {node}")
        elif f"def {name.split('[')[0]}(" not in (ROOT / test_file).read_text():
            found.append(f"{guard['id']}: no test function for {node}")
    return found


class Mutator:
    """Runs the mutants of one database in a copy of the tree, on one shared test database."""

    def __init__(self, database: str, root: Path) -> None:
        self.database = database
        self.root = root
        name = f"celery_durable_guards_{database}_{os.getpid()}"
        self.env = {
            **os.environ,
            "DURABLE_TEST_DB": database,
            "DURABLE_TEST_PG_TEST_NAME": name,
            "DURABLE_TEST_MYSQL_TEST_NAME": name,
            "DURABLE_TEST_SQLITE": str(root / f"{name}.sqlite3"),
        }
        self.fresh = True

    def copy_tree(self) -> None:
        """Copy what the tests need into ``root``."""
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for entry in TREE:
            source = ROOT / entry
            if source.is_dir():
                shutil.copytree(source, self.root / entry, ignore=ignore)
            else:
                shutil.copy2(source, self.root / entry)

    def pytest(self, tests: list[str]) -> tuple[int, str]:
        """Run ``tests`` in the copy on the shared test database: ``(exit status, summary line)``."""
        database = ["--reuse-db", "--create-db"] if self.fresh else ["--reuse-db"]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *database, *tests]
        try:
            done = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            self.fresh = True
            return -1, "timed out after 900 s"
        self.fresh = False
        return done.returncode, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]

    def run(self, guard: dict[str, object]) -> tuple[bool, str]:
        """Apply the mutant in the copy, run the guard's tests, restore; ``(killed, pytest summary)``."""
        path = self.root / str(guard["file"])
        original = path.read_text()
        path.write_text(original.replace(str(guard["source"]), str(guard["mutant"]), 1))
        try:
            status, summary = self.pytest([str(test) for test in guard["tests"]])  # type: ignore[attr-defined]
        finally:
            path.write_text(original)
        passed = re.search(r"(\d+) passed", summary)
        return status == 1 and "failed" in summary and not passed, summary

    def drop_database(self) -> None:
        """Drop the shared test database (nothing happens if no mutant created it)."""
        if self.database == "sqlite":
            return  # a file in the copy, removed with it
        env = {**self.env, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        subprocess.run([sys.executable, "-c", DROP], cwd=self.root, env=env, check=False)

    def run_all(self, guards: list[dict[str, object]]) -> int:
        """Every guard that applies to this database; the number of survivors."""
        survivors = 0
        try:
            self.copy_tree()
            chosen = []
            for guard in guards:
                databases = guard.get("databases")
                if isinstance(databases, list) and self.database not in databases:
                    print(f"{self.database:8} skip     {guard['id']} (only on {', '.join(databases)})", flush=True)
                else:
                    chosen.append(guard)
            tests = sorted({str(test) for guard in chosen for test in guard["tests"]})  # type: ignore[attr-defined]
            status, summary = self.pytest(tests)
            print(f"{self.database:8} {'control ' if status == 0 else 'CONTROL FAILED'} {summary}", flush=True)
            if status != 0:
                return len(chosen)
            for guard in chosen:
                killed, summary = self.run(guard)
                survivors += not killed
                verdict = "killed  " if killed else "SURVIVED"
                print(f"{self.database:8} {verdict} {guard['id']}: {summary}", flush=True)
        finally:
            self.drop_database()
        return survivors


DROP = """
import django
django.setup()
from django.db import DatabaseError, connection
try:
    connection.creation._destroy_test_db(connection.creation._get_test_db_name(), verbosity=0)
except DatabaseError:
    pass  # no mutant created it
"""


def mutate(database: str, guards: list[dict[str, object]]) -> int:
    """Run ``guards`` on ``database`` in a temporary copy of the tree; the number of survivors."""
    with tempfile.TemporaryDirectory(prefix=f"guards-{database}-") as root:
        return Mutator(database, Path(root)).run_all(guards)


def main(argv: list[str]) -> int:
    """Run the check or the mutants; print one line per guard and database."""
    check_only = "--check" in argv
    prefixes = [arg for arg in argv if not arg.startswith("--")]
    chosen = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--databases=")]
    databases = chosen[-1].split(",") if chosen else [os.environ.get("DURABLE_TEST_DB", "sqlite")]
    guards = [g for g in load() if not prefixes or any(str(g["id"]).startswith(p) for p in prefixes)]
    stale = [problem for guard in guards for problem in problems(guard)]
    for problem in stale:
        print("STALE", problem)
    if stale or check_only:
        return 1 if stale else 0
    with ThreadPoolExecutor(max_workers=len(databases)) as pool:
        survivors = sum(pool.map(lambda database: mutate(database, guards), databases))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
