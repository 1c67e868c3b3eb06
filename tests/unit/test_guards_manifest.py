"""tests/guards.toml stays exact: each guard's source text occurs once in its file, its tests exist."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "guard_mutations.py"
spec = importlib.util.spec_from_file_location("guard_mutations", SCRIPT)
guard_mutations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard_mutations)


@pytest.mark.parametrize("guard", guard_mutations.load(), ids=lambda guard: guard["id"])
def test_guard_entry__names_a_unique_source_text_and_existing_tests(guard):
    assert guard_mutations.problems(guard) == []
    assert guard["tests"], "a guard without a test"
