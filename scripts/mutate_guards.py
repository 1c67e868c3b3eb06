"""Mutate every guard of the state machine and check that a test kills each mutant.

Each guard in ``tests/guards.toml`` names a file, an exact source snippet (unique in that
file) and its mutation (the snippet with the guard removed), and the tests that must fail
without it. For each guard this script copies the package, applies the mutation, runs
those tests on SQLite (and on the other databases the guard lists), and records whether
the mutant was killed (a test failed) or survived (all passed). It first checks that the
unmutated tests pass, so a kill is never a broken test. Exit status 1 if a mutant
survived, a snippet is missing or not unique, or a test fails on unmutated code.

    .venv/bin/python scripts/mutate_guards.py [--only ID ...] [--db sqlite|postgres|mysql]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("celery_durable", "tests", "example_project", "pyproject.toml")


def load(only: list[str]) -> list[dict[str, object]]:
    guards = tomllib.loads((ROOT / "tests" / "guards.toml").read_text())["guard"]
    return [g for g in guards if not only or g["id"] in only]


def copy_tree(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
        else:
            shutil.copy2(source, into / name)
    (into / "var").mkdir()


def run_tests(tree: Path, tests: list[str], db: str) -> tuple[bool, str]:
    env = {
        **os.environ,
        "DURABLE_TEST_DB": db,
        "DURABLE_TEST_SQLITE": str(tree / "var" / "guards.sqlite3"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="guard ids to check (default: all)")
    parser.add_argument("--db", action="append", help="databases (default: each guard's, else sqlite)")
    options = parser.parse_args()
    guards = load(options.only)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="durable-guards-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        # The tree must be the one imported: pytest's rootdir (pythonpath ".") is the copy.
        by_db: dict[str, set[str]] = {}
        for guard in guards:
            for db in options.db or guard.get("databases", ["sqlite"]):  # type: ignore[union-attr]
                by_db.setdefault(str(db), set()).update(guard["tests"])  # type: ignore[arg-type]
        for db, tests in sorted(by_db.items()):
            ok, output = run_tests(tree, sorted(tests), db)
            if not ok:
                print(f"unmutated code fails the guard tests on {db}:\n{output}")
                return 1
        for guard in guards:
            path = tree / str(guard["file"])
            original = path.read_text()
            snippet, mutation = str(guard["find"]), str(guard["replace"])
            count = original.count(snippet)
            if count != 1:
                problems.append(f"{guard['id']}: snippet found {count} times in {guard['file']}")
                print(f"ERROR    {guard['id']}: snippet found {count} times in {guard['file']}")
                continue
            path.write_text(original.replace(snippet, mutation))
            try:
                for db in options.db or guard.get("databases", ["sqlite"]):  # type: ignore[union-attr]
                    started = time.monotonic()
                    survived, output = run_tests(tree, list(guard["tests"]), str(db))  # type: ignore[arg-type]
                    verdict = "SURVIVED" if survived else "killed"
                    print(f"{verdict:8} {guard['id']} on {db} ({time.monotonic() - started:.0f} s)", flush=True)
                    if survived:
                        problems.append(f"{guard['id']} survived on {db}")
            finally:
                path.write_text(original)
    killed = len(guards) - len({p.split()[0].rstrip(":") for p in problems})
    print(f"{killed} of {len(guards)} guard mutants killed")
    for problem in problems:
        print("  ", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
