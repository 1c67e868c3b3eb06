"""Issue 15: fair backlogs, limits that change, ``when_full``, shared throttles and rate limits."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_durable import Concurrency, DurableConfigError, RateLimit, Throttle, get_run, set_limit
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from tests.testapp import flows

HOLDING = (RunStatus.QUEUED, RunStatus.RUNNING)


def executed_order(durable):
    """Run everything, one execution at a time; the ids in the order they executed."""
    order = []
    while (run_id := durable.run_next()) is not None:
        order.append(run_id)
    return order


def tenant_of(run_id):
    return get_run(run_id).args_value[0]


def test_fair_key__a_big_backlog_of_one_tenant_delays_another_by_one_run_per_turn(durable):
    held = flows.fair.delay("acme", -1)  # takes the only slot at once
    big = [flows.fair.delay("acme", n) for n in range(200)]
    small = [flows.fair.delay("zeta", n) for n in range(5)]
    assert get_run(held.id).status == "queued"
    assert {get_run(r.id).status for r in big + small} == {"pending"}
    order = executed_order(durable)
    assert order[0] == held.id and len(order) == 206
    promoted = order[1:]
    # Round robin from the database: acme, zeta, acme, zeta, ... until zeta's 5 are done.
    positions = [promoted.index(r.id) for r in small]
    assert positions == [1, 3, 5, 7, 9]
    # Within one tenant the backlog keeps call order (priority, then time).
    assert [r for r in promoted if r in {b.id for b in big}] == [b.id for b in big]
    assert Slot.objects.get(key="f.fair:#0:*").in_use == 0


def test_fair_key__three_tenants_take_turns_in_value_order(durable):
    flows.fair.delay("a", 0)
    calls = [flows.fair.delay(t, n) for t in ("a", "b", "c") for n in range(3)]
    order = executed_order(durable)
    assert [tenant_of(r) for r in order[1:]] == ["a", "b", "c"] * 3
    assert len(calls) == 9


def test_fair_weight__a_heavier_value_gets_its_turns_in_a_row(durable):
    flows.fair_weighted.delay("big", 0)
    for n in range(6):
        flows.fair_weighted.delay("big", n)
        flows.fair_weighted.delay("small", n)
    order = executed_order(durable)
    assert [tenant_of(r) for r in order[1:9]] == ["big", "big", "big", "small", "big", "big", "big", "small"]


def test_fair_promotion__costs_the_same_queries_whatever_the_backlog(durable):
    from celery_durable.store import slots

    def promotion_queries(backlog):
        Run.objects.all().delete()
        Slot.objects.all().delete()
        held = flows.fair.delay("a", 0)
        for n in range(backlog):
            flows.fair.delay("a" if n % 2 else "b", n)
        Run.objects.filter(id=held.id).update(status=RunStatus.COMPLETED)
        with CaptureQueriesContext(connection) as queries:
            assert len(slots.release(held.id)) == 1
        return len(queries)

    assert promotion_queries(5) == promotion_queries(60)


def test_fair_weight__a_weight_lowered_by_a_deploy_applies_to_the_calls_after_it(durable):
    flows.fair_weighted.delay("big", 0)  # takes the only slot
    first = flows.fair_weighted.delay("big", 1)  # weight 3, called before the deploy
    spec = flows.fair_weighted.durable_spec
    declared = spec.concurrency
    lowered = Concurrency(limit=1, fair_key="tenant", fair_weight={"big": 1})
    object.__setattr__(spec, "concurrency", (lowered,))  # the deploy
    try:
        later = [flows.fair_weighted.delay("big", n) for n in (2, 3)]
        small = [flows.fair_weighted.delay("small", n) for n in (1, 2)]
    finally:
        object.__setattr__(spec, "concurrency", declared)
    order = executed_order(durable)
    assert order[1:] == [first.id, small[0].id, later[0].id, small[1].id, later[1].id]


def test_fair_key__a_tenant_arriving_late_takes_turns_with_the_one_waiting(durable):
    flows.fair.delay("a", -1)  # takes the only slot
    early = [flows.fair.delay("a", n) for n in range(10)]
    for _ in range(5):  # a's first five turns are served
        durable.run_next()
    late = [flows.fair.delay("b", n) for n in range(3)]
    order = executed_order(durable)
    # b's runs take one turn each from the round being served, not three turns at once (as if
    # b had waited since the backlog began).
    a, b = [r.id for r in early], [r.id for r in late]
    assert order == [a[4], a[5], b[0], a[6], b[1], a[7], b[2], a[8], a[9]]


def test_fair_key__priority_orders_runs_within_one_tenant(durable):
    flows.fair.delay("a", -1)  # takes the only slot
    normal = [flows.fair.delay("a", n) for n in range(3)]
    others = [flows.fair.delay("b", n) for n in range(3)]
    urgent = flows.fair.delay("a", 9, urgent=True)
    order = executed_order(durable)[1:]
    # The urgent run goes first among a's, in the round being served (a turn more for a there).
    expected = [urgent, normal[0], others[0], normal[1], others[1], normal[2], others[2]]
    assert order == [r.id for r in expected]


def test_fair_key__a_resumed_run_waits_in_the_round_being_served(durable):
    from celery_durable.store import slots

    flows.fair.delay("a", 0)  # takes the only slot
    others = [flows.fair.delay("b", n) for n in range(3)]  # rounds 0, 1, 2
    resumed = flows.fair.delay("c", 0)
    # Called during an earlier, long backlog (round 57), it slept; now it resumes on a full key.
    Run.objects.filter(id=resumed.id).update(status=RunStatus.RUNNING, generation=1, fair_round=57)
    assert not slots.reclaim(resumed.id, 1, {"f.fair:#0:*": 1}, lease_seconds=30)
    assert get_run(resumed.id).status == "pending"
    order = executed_order(durable)[1:]
    # Its turn in the round being served (after b's, by value), not after 57 rounds.
    assert order == [others[0].id, resumed.id, others[1].id, others[2].id]


def test_fair_hand_over__locks_no_slot_row(durable):
    from celery_durable.store import slots

    held = flows.fair.delay("a", 0)
    for tenant in ("a", "b", "c"):
        flows.fair.delay(tenant, 1)
    Run.objects.filter(id=held.id).update(status=RunStatus.COMPLETED)
    with CaptureQueriesContext(connection) as queries:
        (promoted,) = slots.release(held.id)
    assert tenant_of(promoted.run_id) == "a"
    # Concurrent hand-overs of one fair key do not queue on its slot row: only run rows are locked
    # (no SELECT from the slot table ends in FOR UPDATE; PostgreSQL's one-statement hand-over
    # reads the slot row in a sub-select of its own).
    slot_locked = re.compile(r"FROM\s+[`\"]?celery_durable_slot[`\"]?[^()]*FOR UPDATE", re.IGNORECASE)
    assert any("FOR UPDATE" in q["sql"] for q in queries) == connection.features.has_select_for_update_skip_locked
    assert not [q["sql"] for q in queries if slot_locked.search(q["sql"])]


def test_fair_hand_over__costs_no_more_queries_than_a_plain_one(durable):
    from celery_durable.store import slots

    def hand_over_queries(task, calls):
        held = task.delay(*calls[0])
        for args in calls[1:]:
            task.delay(*args)
        ran = held.id
        for _ in range(2):  # the second hand-over is the steady state (the cursor is set)
            Run.objects.filter(id=ran).update(status=RunStatus.COMPLETED)
            with CaptureQueriesContext(connection) as queries:
                (promoted,) = slots.release(ran)
            ran = promoted.run_id
        return len(queries)

    tenants = [(tenant, n) for n in range(3) for tenant in ("a", "b", "c")]
    assert hand_over_queries(flows.fair, tenants) <= hand_over_queries(flows.no_steps_limited, [(1,)] * 9)


def test_limit_callable__each_key_gets_the_limit_its_call_computed(durable):
    eu = [flows.dyn_limit.delay("eu", n) for n in range(3)]
    us = [flows.dyn_limit.delay("us", n) for n in range(2)]
    assert [get_run(r.id).status for r in eu] == ["queued", "queued", "pending"]
    assert [get_run(r.id).status for r in us] == ["queued", "pending"]
    assert Slot.objects.get(key="f.dyn_limit:region:eu").limit == 2


def test_limit_callable__a_bad_result_is_a_named_error_and_records_nothing(durable):
    task = flows.dyn_limit
    spec = task.durable_spec
    declared = spec.concurrency
    broken = Concurrency(limit=lambda region, n: 0, key="region")
    object.__setattr__(spec, "concurrency", (broken,))
    try:
        with pytest.raises(DurableConfigError, match="concurrency limit"):
            task.delay("eu", 1)
    finally:
        object.__setattr__(spec, "concurrency", declared)
    assert not Run.objects.filter(task_name="f.dyn_limit").exists()


def test_set_limit__raising_promotes_the_backlog_at_once_and_removing_stops_no_run(durable):
    calls = [flows.overridden.delay("x", n) for n in range(6)]
    assert [get_run(r.id).status for r in calls].count("queued") == 1
    set_limit(flows.overridden, "x", 3)
    assert [get_run(r.id).status for r in calls] == ["queued"] * 3 + ["pending"] * 3
    slot = Slot.objects.get(key="f.overridden:k:x")
    assert (slot.limit, slot.override, slot.in_use) == (1, 3, 3)
    set_limit("f.overridden", "x", None)  # back to the declared 1: the 3 admitted runs keep going
    assert [get_run(r.id).status for r in calls] == ["queued"] * 3 + ["pending"] * 3
    assert Slot.objects.get(key="f.overridden:k:x").override is None

    def within_limit():
        slot = Slot.objects.get(key="f.overridden:k:x")
        holding = Run.objects.filter(slot_key1=slot.key, holds_slots=True, status__in=HOLDING).count()
        assert holding == slot.in_use
        return holding

    seen = []
    while durable.run_next() is not None:
        seen.append(within_limit())
    # Nothing was promoted until the key was under its limit again; then one at a time.
    assert seen[:3] == [2, 1, 1] and max(seen[2:]) <= 1
    assert all(durable.result(r.id) == n for n, r in enumerate(calls))


def test_set_limit__lowering_admits_nothing_until_the_key_is_under_it(durable):
    set_limit(flows.overridden, "y", 2)  # before any run: the row is made for it
    calls = [flows.overridden.delay("y", n) for n in range(4)]
    assert [get_run(r.id).status for r in calls] == ["queued", "queued", "pending", "pending"]
    set_limit(flows.overridden, "y", 1)

    def statuses():
        return sorted(get_run(r.id).status for r in calls)

    durable.run_next()  # one of the two admitted runs: the other keeps the key at its new limit
    assert statuses() == ["completed", "pending", "pending", "queued"]
    durable.run_next()
    assert statuses() == ["completed", "completed", "pending", "queued"]


def test_set_limit__lowered_on_a_fair_key__hands_no_slot_on_until_the_key_is_under_it(durable):
    set_limit(flows.fair, None, 2)
    calls = [flows.fair.delay(tenant, n) for n, tenant in enumerate("abc")]
    assert [get_run(r.id).status for r in calls] == ["queued", "queued", "pending"]
    set_limit(flows.fair, None, 1)
    durable.run_next()  # one of the two holders ends: the other keeps the key at its new limit
    assert sorted(get_run(r.id).status for r in calls[:2]) == ["completed", "queued"]
    assert get_run(calls[2].id).status == "pending"
    assert Slot.objects.get(key="f.fair:#0:*").in_use == 1
    durable.run_next()
    assert [get_run(r.id).status for r in calls] == ["completed", "completed", "queued"]


def test_set_limit__a_shared_concurrency_name(durable):
    calls = [flows.shared_pool_a.delay("x", n) for n in range(3)]
    set_limit("pool", "x", 2)
    assert [get_run(r.id).status for r in calls] == ["queued", "queued", "pending"]
    assert Slot.objects.get(key="pool:x").override == 2


@pytest.mark.parametrize(
    ("target", "key", "limit", "match"),
    [
        ("f.overridden", "x", 0, "limit must be"),
        ("f.overridden", "x", True, "limit must be"),
        ("f.overridden", "x", "3", "limit must be"),
        ("f.overridden", 1.5, 3, "key must be"),
        ("f.overridden", None, 3, "has a key"),
        ("no-such-name", "x", 3, "neither a durable task"),
        ("f.fair_weighted", "x", 3, "has no key"),
        ("f.stripe_charge", None, 3, "declares no concurrency"),
        (object(), "x", 3, "expected a durable task"),
    ],
)
def test_set_limit__bad_input_is_a_named_error_and_changes_nothing(durable, target, key, limit, match):
    flows.overridden.delay("x", 0)
    before = list(Slot.objects.values_list("key", "limit", "override", "in_use"))
    with pytest.raises(DurableConfigError, match=match):
        set_limit(target, key, limit)
    assert list(Slot.objects.values_list("key", "limit", "override", "in_use")) == before


def test_when_full_skip__the_new_run_ends_skipped(durable):
    first = flows.full_skip.delay("x", 1)
    second = flows.full_skip.delay("x", 2)
    other = flows.full_skip.delay("y", 3)
    assert (get_run(first.id).status, get_run(second.id).status, get_run(other.id).status) == (
        "queued",
        "skipped",
        "queued",
    )
    assert "when_full='skip'" in get_run(second.id).error_value["message"]
    assert not get_run(second.id).holds_slots
    durable.run_until_idle()
    later = flows.full_skip.delay("x", 4)  # a free key admits again
    assert get_run(later.id).status == "queued"


def test_when_full_cancel_oldest__cancels_the_oldest_holder_to_admit_the_new_run(durable):
    first = flows.full_cancel.delay("x", 1)
    second = flows.full_cancel.delay("x", 2)
    assert get_run(first.id).status == "cancelled"
    assert "cancel_oldest" in get_run(first.id).cancel_reason
    assert get_run(second.id).status == "queued"
    third = flows.full_cancel.delay("x", 3)
    assert (get_run(second.id).status, get_run(third.id).status) == ("cancelled", "queued")
    durable.run_until_idle()
    assert durable.result(third.id) == 3
    assert Slot.objects.get(key="f.full_cancel:k:x").in_use == 0


def test_when_full_cancel_oldest__a_running_run_stops_at_its_boundary_and_hands_over(durable):
    first = flows.full_cancel.delay("x", 1)
    Run.objects.filter(id=first.id).update(status=RunStatus.RUNNING)  # executing elsewhere
    second = flows.full_cancel.delay("x", 2)
    assert get_run(first.id).cancel_requested_at is not None
    assert get_run(second.id).status == "pending"  # it waits for the slot the cancelled run frees
    third = flows.full_cancel.delay("x", 3)  # the oldest is already cancelling: nothing more is cancelled
    assert get_run(second.id).status == "pending" and get_run(third.id).status == "pending"


def test_shared_throttle__spaces_the_runs_of_two_tasks(durable):
    a = flows.stripe_charge.delay(1)
    b = flows.stripe_refund.delay(2)
    c = flows.stripe_charge.delay(3)
    a_run, b_run, c_run = (get_run(r.id) for r in (a, b, c))
    assert a_run.wake_at is None
    assert b_run.wake_at - a_run.created_at >= timedelta(seconds=10)
    assert c_run.wake_at - b_run.wake_at == timedelta(seconds=10)


def test_shared_rate_limit__one_budget_for_two_tasks(durable):
    results = [flows.sms_a.delay(1), flows.sms_b.delay(2), flows.sms_a.delay(3)]
    assert [get_run(r.id).status for r in results] == ["queued", "queued", "skipped"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Concurrency(limit=1, fair_weight={"a": 2}), "needs a fair_key"),
        (lambda: Concurrency(limit=1, fair_key="t", fair_weight={"a": 0}), "fair_weight"),
        (lambda: Concurrency(limit=1, fair_key="t", fair_weight=3), "callable or a mapping"),
        (lambda: Concurrency(limit=1, when_full="drop"), "when_full"),
        (lambda: Concurrency(limit=1, fair_key="a b"), "fair_key"),
        (lambda: Throttle(limit=1, period=1, name=""), "name"),
        (lambda: RateLimit(limit=1, period=1, name=3), "name"),
    ],
)
def test_options__bad_values_are_named_errors(make, match):
    with pytest.raises(DurableConfigError, match=match):
        make()
