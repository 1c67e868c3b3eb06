"""Property tests of slot hand-off on the real database: random call/finish sequences."""

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_durable import Concurrency, durable_task
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from celery_durable.testing import DurableTestRunner

LIMIT = 2
KEYS = ("a", "b", "c")


@durable_task(name="t.prop_limited", concurrency=Concurrency(limit=LIMIT, key="key"), priority=lambda key, p: p)
def prop_limited(key, p):
    return key


def slot_key(key):
    return f"t.prop_limited:key:{key}"


def check_invariants():
    for key in KEYS:
        holders = Run.objects.filter(slot_key1=slot_key(key), holds_slots=True)
        in_use = Slot.objects.filter(key=slot_key(key)).values_list("in_use", flat=True).first() or 0
        assert holders.count() == in_use <= LIMIT, key
        assert not holders.exclude(status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).exists(), key
        if Run.objects.filter(slot_key1=slot_key(key), status=RunStatus.PENDING).exists():
            assert in_use == LIMIT, f"{key}: a run waits while a slot is free"


def next_in_backlog(key):
    pending = Run.objects.filter(slot_key1=slot_key(key), status=RunStatus.PENDING)
    return pending.order_by("backlog_at", "id").values_list("id", flat=True).first()


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.sampled_from(KEYS), st.sampled_from((-600, -5, 0, 5, 600)), st.integers(0, 30)),
        st.tuples(st.just("finish"), st.none(), st.none(), st.none()),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPERATIONS)
def test_hand_off__limit_holds_no_slot_idles_and_the_earliest_effective_time_goes_next(db, operations):
    Run.objects.all().delete()
    Slot.objects.all().delete()
    with DurableTestRunner() as durable:
        for kind, key, priority, later in operations:
            if kind == "call":
                durable.clock.advance(timedelta(seconds=later))
                prop_limited.delay(key, priority)
            else:
                expected = {k: next_in_backlog(k) for k in KEYS}
                pending_before = set(Run.objects.filter(status=RunStatus.PENDING).values_list("id", flat=True))
                finished = durable.run_next()
                promoted = pending_before - set(
                    Run.objects.filter(status=RunStatus.PENDING).values_list("id", flat=True)
                )
                if finished is None:
                    assert not promoted
                else:
                    assert promoted <= {expected[k] for k in KEYS}, (promoted, expected)
                    assert len(promoted) <= 1
            check_invariants()
        durable.run_until_idle()
        check_invariants()
        assert not Run.objects.exclude(status=RunStatus.COMPLETED).exists()
