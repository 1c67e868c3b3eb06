"""Schedules without beat: ticks fired by the services' tick, exactly once, on a fake clock."""

from datetime import UTC, datetime, timedelta

import pytest
from celery import current_app

from celery_durable import Schedule, ScheduleError, durable_task
from celery_durable.engine import schedules as engine
from celery_durable.engine.schedules import tick_run_id
from celery_durable.integration.registry import CeleryPublisher
from celery_durable.integration.services import tick
from celery_durable.integration.timetable import CeleryTimetable
from celery_durable.models import Run, ScheduleState
from celery_durable.store import schedules as store
from tests.integration.scheduling import START, runs_of, services


def test_first_tick_creates_the_row__and_fires_nothing(declare, durable):
    task = declare("first", Schedule(every=timedelta(minutes=1)))
    assert services() == [0, 0, 0]
    row = ScheduleState.objects.get(task_name=task.name)
    assert row.next_tick_at == START + timedelta(minutes=1)
    assert row.definition == "every 60s"
    assert runs_of(task) == []


def test_every__one_run_per_tick_however_many_services_tick(declare, durable):
    task = declare("every", Schedule(every=timedelta(seconds=10), overlap="allow", args=(1,), kwargs={"b": 2}))
    services()
    for _ in range(60):  # a minute of fake time in steps of one second, three services each
        durable.clock.advance(1)
        services()
    ticks = [START + timedelta(seconds=10 * i) for i in range(1, 7)]
    assert [run.id for run in runs_of(task)] == [tick_run_id(task.name, t) for t in ticks]
    assert {(tuple(r.args_value), tuple(r.kwargs_value.items())) for r in runs_of(task)} == {((1,), (("b", 2),))}
    assert all(r.published_at is not None for r in runs_of(task))
    row = ScheduleState.objects.get(task_name=task.name)
    assert row.last_tick_at == ticks[-1]
    assert row.next_tick_at == ticks[-1] + timedelta(seconds=10)


def test_an_idle_tick_with_a_schedule__costs_one_more_query(declare, durable):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    declare("idle", Schedule(every=timedelta(hours=1)))
    services(1)  # creates the row
    with CaptureQueriesContext(connection) as queries:
        assert services(1) == [0]
    assert len(queries) == 2, [q["sql"] for q in queries.captured_queries]


def test_a_fired_tick__is_published_after_commit(declare, durable, django_capture_on_commit_callbacks):
    task = declare("published", Schedule(every=timedelta(seconds=10)))
    services()
    durable.clock.advance(10)
    with django_capture_on_commit_callbacks(execute=True):
        services()
    assert [m.run_id for m in durable.published] == [tick_run_id(task.name, START + timedelta(seconds=10))]


def test_cron__parsed_by_celery_crontab_fires_each_tick_once(declare, durable):
    task = declare("cron", Schedule(cron="*/5 * * * *", overlap="allow"))
    services()
    for _ in range(60):  # an hour in steps of a minute
        durable.clock.advance(60)
        services()
    ticks = [START + timedelta(minutes=5 * i) for i in range(1, 13)]
    assert [run.id for run in runs_of(task)] == [tick_run_id(task.name, t) for t in ticks]


def test_overlap_skip__records_the_skipped_tick_and_starts_again_once_finished(declare, durable):
    task = declare("skip", Schedule(every=timedelta(seconds=10), overlap="skip"))
    services()
    durable.clock.advance(10)
    services()  # first run, left queued
    durable.clock.advance(10)
    services()  # unfinished: skipped
    first, second = runs_of(task)
    assert (first.status, second.status) == ("queued", "skipped")
    assert "overlap='skip'" in second.error_value["message"]
    durable.run_next()
    durable.clock.advance(10)
    services()
    assert [r.status for r in runs_of(task)] == ["completed", "skipped", "queued"]


def test_overlap_buffer_one__keeps_one_tick_and_starts_it_when_the_run_finishes(declare, durable):
    task = declare("buffer", Schedule(every=timedelta(seconds=10), overlap="buffer_one"))
    services()
    for _ in range(3):  # ticks at 10 (started), 20 (buffered), 30 (skipped: buffer full)
        durable.clock.advance(10)
        services()
    assert [r.status for r in runs_of(task)] == ["queued", "skipped"]
    assert ScheduleState.objects.get(task_name=task.name).buffered_tick_at == START + timedelta(seconds=20)
    durable.run_next()
    services()  # no new tick is due: the buffered one starts
    statuses = {r.id: r.status for r in runs_of(task)}
    assert statuses == {
        tick_run_id(task.name, START + timedelta(seconds=10)): "completed",
        tick_run_id(task.name, START + timedelta(seconds=20)): "queued",  # the buffered tick
        tick_run_id(task.name, START + timedelta(seconds=30)): "skipped",
    }
    assert ScheduleState.objects.get(task_name=task.name).buffered_tick_at is None


def test_overlap_cancel_other__cancels_the_unfinished_run_and_starts_the_new_one(declare, durable):
    task = declare("cancel", Schedule(every=timedelta(seconds=10), overlap="cancel_other"))
    services()
    durable.clock.advance(10)
    services()
    durable.clock.advance(10)
    services()
    first, second = runs_of(task)
    assert (first.status, second.status) == ("cancelled", "queued")
    assert "cancel_other" in first.cancel_reason


def test_overlap_allow__starts_every_tick(declare, durable):
    task = declare("allow", Schedule(every=timedelta(seconds=10), overlap="allow"))
    services()
    for _ in range(3):
        durable.clock.advance(10)
        services()
    assert [r.status for r in runs_of(task)] == ["queued", "queued", "queued"]


def test_catchup__fires_the_missed_ticks_within_the_window_each_once(declare, durable):
    task = declare("catchup", Schedule(every=timedelta(minutes=1), overlap="allow", catchup=timedelta(minutes=10)))
    services()
    durable.clock.advance(timedelta(hours=1))  # the services were down for an hour
    assert services() == [11, 0, 0]  # ticks at 50..60 minutes
    expected = [START + timedelta(minutes=m) for m in range(50, 61)]
    assert [r.id for r in runs_of(task)] == [tick_run_id(task.name, t) for t in expected]


def test_catchup_none__fires_only_the_latest_missed_tick(declare, durable):
    task = declare("latest", Schedule(cron="* * * * *", overlap="allow"))
    services()
    durable.clock.advance(timedelta(hours=1, seconds=30))
    assert services() == [1, 0, 0]
    assert [r.id for r in runs_of(task)] == [tick_run_id(task.name, START + timedelta(hours=1))]
    row = ScheduleState.objects.get(task_name=task.name)
    assert row.next_tick_at == START + timedelta(hours=1, minutes=1)


def test_catchup__fires_at_most_a_batch_per_pass_and_goes_on_in_the_next(declare, durable):
    task = declare("batch", Schedule(every=timedelta(seconds=1), overlap="allow", catchup=timedelta(hours=1)))
    services()
    durable.clock.advance(250)
    assert services(4) == [100, 100, 50, 0]
    assert len(runs_of(task)) == 250


def test_a_stale_claim__changes_nothing(declare, durable):
    """The conditional UPDATE is the whole guarantee: a row read before another claim cannot claim."""
    task = declare("stale", Schedule(every=timedelta(seconds=10), overlap="allow"))
    services()
    durable.clock.advance(10)
    stale = ScheduleState.objects.get(task_name=task.name)
    assert services() == [1, 0, 0]
    claimed = store.claim(
        stale,
        next_tick_at=stale.next_tick_at + timedelta(seconds=10),
        last_tick_at=None,
        last_run_id=None,
        buffered_tick_at=None,
    )
    assert claimed is False
    assert ScheduleState.objects.get(task_name=task.name).next_tick_at == START + timedelta(seconds=20)


@pytest.mark.parametrize("meanwhile", ["claimed", "paused"])
def test_claim__is_a_compare_and_set_on_the_tick_read_and_refused_when_paused(declare, durable, meanwhile):
    task = declare("cas", Schedule(every=timedelta(seconds=10), overlap="allow"))
    services()
    stale = ScheduleState.objects.get(task_name=task.name)
    if meanwhile == "claimed":  # another process moved the schedule on, nothing else changed
        fresh = ScheduleState.objects.get(task_name=task.name)
        moved = fresh.next_tick_at + timedelta(seconds=10)
        assert store.claim(fresh, next_tick_at=moved, last_tick_at=None, last_run_id=None, buffered_tick_at=None)
    else:
        assert engine.pause(task.name)
    before = list(ScheduleState.objects.values())
    again = stale.next_tick_at + timedelta(seconds=10)
    assert not store.claim(stale, next_tick_at=again, last_tick_at=None, last_run_id=None, buffered_tick_at=None)
    assert list(ScheduleState.objects.values()) == before


def test_a_failure_after_the_claim__undoes_the_claim_and_the_services_go_on(declare, durable, monkeypatch, caplog):
    task = declare("crash", Schedule(every=timedelta(seconds=10), overlap="allow"))
    other = declare("crash_other", Schedule(every=timedelta(seconds=10), overlap="allow"))
    services()
    durable.clock.advance(10)
    real_start = engine._start

    def crash(spec, run_id, publisher):
        if spec.name == task.name:
            raise RuntimeError("process died between the claim and the run")
        return real_start(spec, run_id, publisher)

    monkeypatch.setattr(engine, "_start", crash)
    assert services(1) == [1]  # the other schedule fired
    assert "could not be fired" in caplog.text
    assert ScheduleState.objects.get(task_name=task.name).next_tick_at == START + timedelta(seconds=10)
    assert runs_of(task) == [] and len(runs_of(other)) == 1
    monkeypatch.undo()
    assert services() == [1, 0, 0]
    assert [r.id for r in runs_of(task)] == [tick_run_id(task.name, START + timedelta(seconds=10))]


def test_pause_resume_trigger(declare, durable):
    task = declare("pause", Schedule(every=timedelta(seconds=10), overlap="allow"))
    timetable, publisher = CeleryTimetable(current_app), CeleryPublisher(current_app)
    services()
    assert engine.pause(task.name) is True
    assert engine.pause(task.name) is False
    durable.clock.advance(35)
    assert services() == [0, 0, 0]
    assert engine.resume(timetable, task.name) is True
    assert ScheduleState.objects.get(task_name=task.name).next_tick_at == START + timedelta(seconds=40)
    run_id = engine.trigger(timetable, publisher, task.name)
    assert Run.objects.get(id=run_id).status == "queued"
    assert ScheduleState.objects.get(task_name=task.name).last_run_id == run_id
    durable.clock.advance(5)
    assert services() == [1, 0, 0]


def test_backfill__fires_each_tick_of_the_range_once_and_is_idempotent(declare, durable):
    task = declare("backfill", Schedule(cron="0 * * * *", overlap="skip"))
    timetable, publisher = CeleryTimetable(current_app), CeleryPublisher(current_app)
    services()
    start, end = START - timedelta(hours=5), START - timedelta(hours=1)
    started = engine.backfill(timetable, publisher, task.name, start, end)
    expected = [tick_run_id(task.name, START - timedelta(hours=h)) for h in range(5, 0, -1)]
    assert started == expected
    assert engine.backfill(timetable, publisher, task.name, start - timedelta(hours=1), end) == [
        tick_run_id(task.name, START - timedelta(hours=6))
    ]
    assert Run.objects.filter(task_name=task.name).count() == 6


def test_backfill__refuses_a_bad_range_and_changes_nothing(declare, durable):
    task = declare("badrange", Schedule(every=timedelta(seconds=1)))
    timetable, publisher = CeleryTimetable(current_app), CeleryPublisher(current_app)
    with pytest.raises(ScheduleError, match="after its end"):
        engine.backfill(timetable, publisher, task.name, START, START - timedelta(seconds=1))
    with pytest.raises(ScheduleError, match="at most"):
        engine.backfill(timetable, publisher, task.name, START, START + timedelta(hours=1))
    with pytest.raises(ScheduleError, match="no durable task with a Schedule"):
        engine.backfill(timetable, publisher, "tests.nope", START, START)
    assert Run.objects.count() == 0


def test_a_changed_schedule__starts_over_from_its_next_tick(declare, durable):
    task = declare("redefined", Schedule(every=timedelta(seconds=10)))
    services()
    ScheduleState.objects.filter(task_name=task.name).update(definition="every 99s")
    durable.clock.advance(3)
    services(1)
    row = ScheduleState.objects.get(task_name=task.name)
    assert (row.definition, row.next_tick_at) == ("every 10s", START + timedelta(seconds=10))


def test_a_row_whose_task_no_longer_declares_a_schedule__is_left_alone(declare, durable):
    row = ScheduleState.objects.create(task_name="tests.gone", definition="every 10s", next_tick_at=START)
    durable.clock.advance(60)
    declare("other", Schedule(every=timedelta(hours=1)))
    services()
    assert ScheduleState.objects.get(pk=row.pk).next_tick_at == START
    assert not Run.objects.filter(task_name="tests.gone").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"cron": "* * * * *", "every": timedelta(seconds=1)}, "exactly one"),
        ({"cron": "* * * *"}, "5-field"),
        ({"every": 10}, "timedelta"),
        ({"every": timedelta(milliseconds=1500)}, "whole number"),
        ({"every": timedelta(seconds=1), "overlap": "queue"}, "overlap"),
        ({"every": timedelta(seconds=1), "catchup": timedelta(0)}, "catchup"),
        ({"every": timedelta(seconds=1), "kwargs": []}, "kwargs"),
    ],
)
def test_schedule__bad_options_are_named_errors(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule(**kwargs)


def test_bad_declarations__fail_at_import_time(db):
    with pytest.raises(ScheduleError, match="not a valid cron"):

        @durable_task(name="tests.scheduled.badcron", schedule=Schedule(cron="61 * * * *"))
        def bad_cron():
            pass

    with pytest.raises(ScheduleError, match="signature"):

        @durable_task(name="tests.scheduled.badargs", schedule=Schedule(every=timedelta(seconds=1), args=(1, 2)))
        def bad_args(x):
            pass

    with pytest.raises(ScheduleError, match="not JSON-serializable"):

        @durable_task(name="tests.scheduled.badjson", schedule=Schedule(every=timedelta(seconds=1), args=(object(),)))
        def bad_json(x):
            pass

    assert not ScheduleState.objects.exists()
    for name in ("badcron", "badargs", "badjson"):
        assert f"tests.scheduled.{name}" not in current_app.tasks


@pytest.mark.django_db(transaction=True)
def test_three_services_ticking_at_the_same_moment__fire_each_tick_once():
    """Three services threads, each on its own connection, released together at every step."""
    import threading

    from django.db import connection, connections

    from celery_durable.testing import DurableTestRunner

    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers: the race needs a server database")
    name = "tests.scheduled.race"

    @durable_task(name=name, schedule=Schedule(every=timedelta(seconds=5), overlap="allow"))
    def race():
        return None

    try:
        with DurableTestRunner() as durable:
            durable.clock.current = START
            tick(current_app, backstops=False)
            fired = []
            for _ in range(30):  # a minute of fake time in steps of 2 s: 12 ticks
                durable.clock.advance(2)
                barrier = threading.Barrier(3)

                def services_thread(barrier=barrier):
                    try:
                        barrier.wait(10)
                        fired.append(tick(current_app, backstops=False).scheduled)
                    finally:
                        connections.close_all()

                threads = [threading.Thread(target=services_thread) for _ in range(3)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
            ids = sorted(Run.objects.filter(task_name=name).values_list("id", flat=True))
            assert ids == sorted(tick_run_id(name, START + timedelta(seconds=5 * i)) for i in range(1, 13))
            assert sum(fired) == 12
            assert len(fired) == 90
    finally:
        current_app.tasks.pop(name, None)


def test_next_after__cron_in_the_celery_timezone_and_naive_times_as_local(settings):
    from zoneinfo import ZoneInfo

    from celery_durable.integration.timetable import next_after

    settings.TIME_ZONE = "Europe/Paris"  # USE_TZ=False: the clock gives naive Paris times
    assert next_after(Schedule(cron="*/5 * * * *"), datetime(2026, 1, 1, 10, 2, 30)) == datetime(2026, 1, 1, 10, 5)
    # "0 3 * * *" is 03:00 in the Celery app's timezone, given back as a naive Paris time.
    celery_tz = current_app.timezone
    expected = datetime(2026, 1, 1, 3, 0, tzinfo=celery_tz).astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
    assert next_after(Schedule(cron="0 3 * * *"), datetime(2026, 1, 1, 0, 0)) == expected
    aware = datetime(2026, 1, 1, 10, 2, 30, tzinfo=UTC)
    assert next_after(Schedule(cron="0 3 * * *"), aware) == datetime(2026, 1, 2, 3, 0, tzinfo=celery_tz)
    assert next_after(Schedule(every=timedelta(hours=1)), aware) == datetime(2026, 1, 1, 11, 0, tzinfo=UTC)


def test_durable_services_command__fires_due_ticks(declare, durable):
    import io

    from django.core.management import call_command

    task = declare("command", Schedule(cron="* * * * *"))
    call_command("durable_services", "--once", stdout=io.StringIO())
    durable.clock.advance(60)
    out = io.StringIO()
    call_command("durable_services", "--once", stdout=out)
    assert "scheduled=1" in out.getvalue()
    assert [r.id for r in runs_of(task)] == [tick_run_id(task.name, START + timedelta(minutes=1))]


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [
        ("skip", ["queued", "skipped", "skipped", "skipped"]),
        ("buffer_one", ["queued", "skipped", "skipped"]),  # the second tick waits in the row
        ("cancel_other", ["skipped", "skipped", "skipped", "queued"]),
        ("allow", ["queued", "queued", "queued", "queued"]),
    ],
)
def test_catchup__applies_the_overlap_policy_to_the_missed_ticks(declare, durable, overlap, expected):
    task = declare(
        f"missed_{overlap}", Schedule(every=timedelta(minutes=1), overlap=overlap, catchup=timedelta(hours=1))
    )
    services()
    durable.clock.advance(timedelta(minutes=4))
    services()
    assert [r.status for r in sorted(runs_of(task), key=lambda r: r.id)] == expected
    buffered = ScheduleState.objects.get(task_name=task.name).buffered_tick_at
    assert buffered == (START + timedelta(minutes=2) if overlap == "buffer_one" else None)
