"""The checks of ``step.set_metadata`` and ``step.progress`` (no database)."""

import pytest

from celery_durable import InvalidMetadata
from celery_durable.options import RetryPolicy
from celery_durable.runtime.memory import MemoryCheckpointWriter
from celery_durable.runtime.metadata import MAX_FIELDS, check_fields, check_progress, search_text
from celery_durable.runtime.steps import StepContext


def _context(metadata=None):
    writer = MemoryCheckpointWriter()
    ctx = StepContext(
        run_id="r",
        task_name="t",
        checkpoints={},
        writer=writer,
        policy=RetryPolicy(retries=0),
        clock=lambda: __import__("datetime").datetime(2026, 1, 1),
        max_output_bytes=1000,
        metadata=metadata,
    )
    return ctx, writer


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": 1}, [1], b"x", "v" * 201, "a\x00"])
def test_check_fields__refuses_values_that_are_not_small_json_scalars(value):
    with pytest.raises(InvalidMetadata):
        check_fields({"f": value}, {})


@pytest.mark.parametrize("name", ["1x", "a-b", "", "é" * 3 + "-", "x" * 65])
def test_check_fields__refuses_names_that_are_not_identifiers(name):
    with pytest.raises(InvalidMetadata):
        check_fields({name: 1}, {})


def test_check_fields__caps_the_number_of_fields():
    current = {f"f{i}": i for i in range(MAX_FIELDS)}
    check_fields({"f0": 5}, current)  # replacing is fine
    with pytest.raises(InvalidMetadata):
        check_fields({"another": 1}, current)


def test_search_text__a_str_is_itself_anything_else_its_json():
    assert [search_text(v) for v in ("a", 1, 1.5, True, None)] == ["a", "1", "1.5", "true", "null"]


def test_set_metadata__writes_only_changed_fields_and_keeps_types_apart():
    ctx, writer = _context({"n": 1})
    ctx.set_metadata(n=1)
    assert writer.writes == 0
    ctx.set_metadata(n=True)  # True == 1 in Python, but not the same metadata
    ctx.set_metadata(n=True, m="x")
    assert writer.writes == 2 and writer.metadata == {"n": True, "m": "x"}
    assert ctx.metadata == {"n": True, "m": "x"}


def test_set_metadata__bad_input_writes_nothing():
    ctx, writer = _context()
    with pytest.raises(InvalidMetadata):
        ctx.set_metadata(ok=1, bad=[1])
    assert writer.writes == 0 and ctx.metadata == {}


def test_progress__records_the_step_it_runs_in():
    ctx, writer = _context()
    ctx.run("work", lambda: ctx.progress(3, 10, "x" * 500))
    ctx.progress(1, 1)
    assert [(p["step"], p["done"], p["total"], len(p["message"])) for p in writer.progress] == [
        ("work", 3, 10, 200),
        (None, 1, 1, 0),
    ]
    for args in ((-1, 2, ""), (1, "2", ""), (True, 2, ""), (1, 2, 3)):
        with pytest.raises(InvalidMetadata):
            check_progress(*args)
