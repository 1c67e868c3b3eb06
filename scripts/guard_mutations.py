"""Remove each guard of ``tests/guards.toml`` in turn and check that its tests catch it.

    DURABLE_TEST_DB=postgres .venv/bin/python scripts/guard_mutations.py [--check] [ID-PREFIX ...]

For each guard: the source file gets the mutant text instead of the guard, the guard's
tests run (pytest), and the file is restored (also on Ctrl-C). A guard is *killed* when
pytest reports failures and none of its tests passed (a test skipped on this database
counts neither way). ``--check`` only verifies that every guard's source text occurs
exactly once in its file and that every test file exists. Exit status 1 when a mutant
survives or the manifest is stale.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "guards.toml"


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


def run_mutant(guard: dict[str, object]) -> tuple[bool, str]:
    """Apply the mutant, run the guard's tests, restore; ``(killed, pytest summary)``."""
    path = ROOT / str(guard["file"])
    original = path.read_text()
    path.write_text(original.replace(str(guard["source"]), str(guard["mutant"]), 1))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *guard["tests"]],  # type: ignore[misc]
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        path.write_text(original)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    passed = re.search(r"(\d+) passed", summary)
    killed = done.returncode == 1 and "failed" in summary and not passed
    return killed, summary


def main(argv: list[str]) -> int:
    """Run the check or the mutants; print one line per guard."""
    check_only = "--check" in argv
    prefixes = [arg for arg in argv if not arg.startswith("--")]
    guards = [g for g in load() if not prefixes or any(str(g["id"]).startswith(p) for p in prefixes)]
    stale = [problem for guard in guards for problem in problems(guard)]
    for problem in stale:
        print("STALE", problem)
    if stale or check_only:
        return 1 if stale else 0
    database = os.environ.get("DURABLE_TEST_DB", "sqlite")
    survivors = 0
    for guard in guards:
        databases = guard.get("databases")
        if isinstance(databases, list) and database not in databases:
            print(f"skip     {guard['id']} (only on {', '.join(databases)})")
            continue
        killed, summary = run_mutant(guard)
        survivors += not killed
        print(f"{'killed ' if killed else 'SURVIVED'} {guard['id']}: {summary}", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
