"""The chaos session's seed and its restart rule, as pure functions (no workers, no database)."""

import pytest

from celery_durable.models import Run

from . import faults, harness, seeds
from .workload import Workload

pytestmark = pytest.mark.chaos

OTHERS = ["4242 /usr/bin/python -m pytest tests/integration", "4343 python bench/scale.py"]


# --- restarts: skipped on a shared machine, a failure under CELERY_DURABLE_REQUIRE_SERVICES=1 ----


def test_may_restart__goes_ahead_when_allowed_and_nobody_else_runs():
    assert faults.may_restart("pg_restart", [], allowed=True, require=False) is True
    assert faults.may_restart("pg_restart", [], allowed=True, require=True) is True


def test_may_restart__a_developer_run_skips_while_others_use_the_services():
    assert faults.may_restart("pg_restart", OTHERS, allowed=True, require=False) is False
    assert faults.may_restart("redis_restart", [], allowed=False, require=False) is False


def test_may_restart__required_fails_naming_the_kind_and_the_competing_processes():
    with pytest.raises(faults.RestartSkipped) as raised:
        faults.may_restart("rabbitmq_restart", OTHERS, allowed=True, require=True)
    message = str(raised.value)
    assert "rabbitmq_restart" in message
    assert OTHERS[0] in message and OTHERS[1] in message
    assert "CELERY_DURABLE_REQUIRE_SERVICES=1" in message


def test_may_restart__required_fails_when_restarts_are_disallowed():
    with pytest.raises(faults.RestartSkipped, match="pg_restart could not run \\(restarts are disallowed\\)"):
        faults.may_restart("pg_restart", [], allowed=False, require=True)


def test_may_restart__a_long_list_of_competitors_is_cut_short():
    many = [f"{pid} pytest" for pid in range(100, 112)]
    with pytest.raises(faults.RestartSkipped) as raised:
        faults.may_restart("pg_restart", many, allowed=True, require=True)
    assert "12 other" in str(raised.value) and "and 7 more" in str(raised.value)
    assert "111 pytest" not in str(raised.value)


@pytest.mark.parametrize(("value", "require"), [("1", True), ("0", False), ("", False), ("true", False)])
def test_required__only_celery_durable_require_services_1(monkeypatch, value, require):
    monkeypatch.setenv("CELERY_DURABLE_REQUIRE_SERVICES", value)
    assert faults.required() is require


def test_not_landed__a_skipped_restart_counts_only_without_require():
    plan = ["kill_child", "pg_restart", "redis_restart"]
    counts = {"kill_child": 2, "pg_restart:skipped": 1, "redis_restart": 1}
    assert harness.not_landed(plan, counts, require=False) == []
    assert harness.not_landed(plan, counts, require=True) == ["pg_restart"]
    assert harness.not_landed(plan, {"kill_child": 1}, require=False) == ["pg_restart", "redis_restart"]


# --- the seed: printed, replayable, the source of every random choice ------------------------


def test_chaos_seed__from_the_environment(monkeypatch):
    monkeypatch.setenv(seeds.ENV, " 4711 ")
    assert seeds.chaos_seed() == 4711
    assert seeds.chaos_seed("12") == 12  # --seed wins over the environment


def test_chaos_seed__a_new_one_without_the_variable(monkeypatch):
    monkeypatch.delenv(seeds.ENV, raising=False)
    drawn = {seeds.chaos_seed() for _ in range(20)}
    assert all(0 <= seed < 10**6 for seed in drawn)
    assert len(drawn) > 1
    monkeypatch.setenv(seeds.ENV, "")
    assert 0 <= seeds.chaos_seed() < 10**6


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
def test_chaos_seed__a_bad_value_is_a_named_error(monkeypatch, value):
    monkeypatch.setenv(seeds.ENV, value)
    with pytest.raises(seeds.BadSeed, match="must be a non-negative integer"):
        seeds.chaos_seed()


def test_banner__names_the_seed_and_how_to_replay_it():
    assert seeds.banner(31337) == "chaos seed 31337 (replay: DURABLE_CHAOS_SEED=31337, or bench/chaos.py --seed 31337)"


def draws(stream, n=8):
    return [stream.random() for _ in range(n)]


def test_streams__the_same_seed_gives_the_same_streams_and_they_are_independent():
    a, b = seeds.streams(7), seeds.streams(7)
    for name in ("plan", "schedule", "workload", "faults"):
        assert draws(getattr(a, name)) == draws(getattr(b, name)), name
    c = seeds.streams(7)
    for _ in range(100):
        c.faults.random()  # a fault drawing more numbers than last time...
    assert draws(c.workload) == draws(seeds.streams(7).workload)  # ...leaves the workload alone
    assert draws(seeds.streams(8).workload) != draws(seeds.streams(7).workload)
    values = [draws(getattr(seeds.streams(7), name), 1)[0] for name in ("plan", "schedule", "workload", "faults")]
    assert len(set(values)) == 4


def test_short_plan__every_kind_once_in_the_order_of_the_seed():
    redis = harness.short_plan(5, "redis://127.0.0.1:6379/7")
    assert sorted(redis) == sorted([*harness.PLAN, "redis_restart"])
    assert harness.short_plan(5, "redis://127.0.0.1:6379/7") == redis
    assert sorted(harness.short_plan(5, "amqp://guest@127.0.0.1//")) == sorted([*harness.PLAN, "rabbitmq_restart"])
    orders = {tuple(harness.short_plan(seed, "redis://")) for seed in range(10)}
    assert len(orders) > 1


def test_workload__the_same_seed_calls_the_same_runs(durable):
    """The workload's choices (kinds, arguments, delays, event tokens) come from its stream alone.

    Runs are recorded in the database (the ``durable`` runner stands in for the broker)."""

    def calls(seed):
        workload = Workload(seeds.streams(seed).workload, "chaos-seeds")
        for _ in range(30):
            workload.spawn()
        rows = dict(Run.objects.filter(id__in=workload.called).values_list("id", "task_name"))
        args = dict(Run.objects.filter(id__in=workload.called).values_list("id", "args"))
        runs = [(rows[run_id], args[run_id]) for run_id in workload.called]
        events = [(n, token) for _due, n, token in workload.events]
        return runs, events, len(workload.cancels)

    first = calls(99)
    assert len(first[0]) >= 30 and first[1]  # every call recorded; some waiters, with their event tokens
    assert calls(99) == first
    assert calls(100) != first
