"""The examples of the flow-control how-to pages and cookbook (docs/howto/), run as written."""

from datetime import date, timedelta

import pytest

from celery_durable import (
    Batch,
    Concurrency,
    Debounce,
    RateLimit,
    RunSkipped,
    Singleton,
    Throttle,
    batch_run,
    durable_task,
    get_run,
    step,
)
from celery_durable.models import Run, Slot


def encode(video_id):
    return {"video": video_id, "url": f"https://cdn.example.com/{video_id}.mp4"}


def publish(video_id, rendition):
    return "published"


# --- concurrency.md ------------------------------------------------------------------


@durable_task(name="docs.transcode_video", concurrency=Concurrency(limit=1, key="user_id"))
def transcode_video(video_id: int, user_id: int) -> dict:
    rendition = step.run("encode", encode, video_id)
    return step.run("publish", publish, video_id, rendition, atomic=True)


def test_concurrency__one_transcode_per_user(durable):
    a1 = transcode_video.delay(1, user_id=7)
    a2 = transcode_video.delay(2, user_id=7)
    b1 = transcode_video.delay(3, user_id=8)
    assert [get_run(r.id).status for r in (a1, a2, b1)] == ["queued", "pending", "queued"]

    durable.run_until_idle()  # a1 ends and hands its slot to a2
    assert {get_run(r.id).status for r in (a1, a2, b1)} == {"completed"}
    assert Slot.objects.get(key="docs.transcode_video:user_id:7").in_use == 0


# --- priority.md ---------------------------------------------------------------------


def paid_first(video_id: int, user_id: int, plan: str = "free") -> int:
    return 600 if plan != "free" else 0


@durable_task(name="docs.transcode_paid", concurrency=Concurrency(limit=1, key="user_id"), priority=paid_first)
def transcode_paid(video_id: int, user_id: int, plan: str = "free") -> dict:
    return step.run("encode", encode, video_id)


def test_priority__a_paid_upload_jumps_the_users_backlog(durable):
    free = [transcode_paid.delay(n, 7) for n in range(1, 4)]
    paid = transcode_paid.delay(4, 7, plan="pro")
    assert get_run(paid.id).status == "pending"
    assert get_run(paid.id).priority == 600

    assert durable.run_next() == free[0].id
    assert get_run(paid.id).status == "queued"
    assert [get_run(r.id).status for r in free[1:]] == ["pending", "pending"]


# --- throttle.md ---------------------------------------------------------------------


@durable_task(
    name="docs.sync_account", throttle=Throttle(limit=10, period=timedelta(minutes=1), key="account_id", burst=2)
)
def sync_account(account_id: int) -> int:
    return account_id


def test_throttle__syncs_are_spaced_six_seconds_apart(durable):
    now = durable.clock.now()
    runs = [sync_account.delay(42) for _ in range(4)]
    starts = [get_run(r.id).wake_at for r in runs]
    assert starts == [None, None, now + timedelta(seconds=6), now + timedelta(seconds=12)]
    assert get_run(sync_account.delay(7).id).wake_at is None

    durable.run_until_idle()
    assert {get_run(r.id).status for r in runs} == {"completed"}
    assert [get_run(r.id).status for r in runs] == ["completed"] * 4


# --- rate-limit.md -------------------------------------------------------------------


@durable_task(name="docs.send_digest", rate_limit=RateLimit(limit=1, period=timedelta(hours=4), key="company_id"))
def send_digest(company_id: int) -> str:
    return f"digest for {company_id}"


def test_rate_limit__second_digest_within_four_hours_is_skipped(durable, django_capture_on_commit_callbacks):
    first = send_digest.delay(1)
    with django_capture_on_commit_callbacks(execute=True):
        again = send_digest.delay(1)
    assert get_run(first.id).status == "queued"
    assert get_run(again.id).status == "skipped"
    assert "rate limit" in get_run(again.id).error_value["message"]
    with pytest.raises(RunSkipped):
        again.get(timeout=5)

    durable.clock.advance(timedelta(hours=4, seconds=1))
    assert get_run(send_digest.delay(1).id).status == "queued"


# --- debounce.md ---------------------------------------------------------------------


def index_document(document_id, version):
    return version


@durable_task(name="docs.reindex", debounce=Debounce(period=60, key="document_id", timeout=600))
def reindex(document_id: int, version: int) -> int:
    return step.run("index", index_document, document_id, version)


def test_debounce__a_burst_of_edits_is_indexed_once_with_the_last_version(durable):
    ids = set()
    for version in range(1, 4):
        ids.add(reindex.delay(9, version).id)
        durable.clock.advance(30)
    assert len(ids) == 1
    run_id = ids.pop()
    assert get_run(run_id).args_value == [9, 3]

    durable.run_until_idle()
    assert durable.result(run_id) == 3
    assert Run.objects.filter(task_name="docs.reindex").count() == 1


# --- idempotency-singleton.md --------------------------------------------------------


def charge_card(order_id):
    return f"charged {order_id}"


@durable_task(name="docs.charge", idempotency_key="order_id")
def charge(order_id: int, note: str = "") -> str:
    return step.run("charge", charge_card, order_id)


def test_idempotency__a_double_click_charges_once(durable):
    first = charge.delay(17)
    second = charge.delay(17, note="clicked again")
    assert second.id == first.id
    durable.run_until_idle()
    assert durable.result(first.id) == "charged 17"

    durable.clock.advance(timedelta(hours=24, seconds=1))
    assert charge.delay(17).id != first.id


def rebuild(user_id):
    return user_id


@durable_task(name="docs.rebuild_feed", singleton=Singleton(key="user_id", mode="skip"))
def rebuild_feed(user_id: int) -> int:
    step.sleep("settle", 60)
    return step.run("rebuild", rebuild, user_id)


def test_singleton__a_second_rebuild_is_skipped_while_one_is_unfinished(durable):
    first = rebuild_feed.delay(7)
    durable.run_until_idle(advance_clock=False)
    assert get_run(first.id).status == "sleeping"
    second = rebuild_feed.delay(7)
    assert get_run(second.id).status == "skipped"
    assert get_run(rebuild_feed.delay(8).id).status == "queued"

    durable.run_until_idle()
    assert durable.result(first.id) == 7
    assert get_run(rebuild_feed.delay(7).id).status == "queued"


# --- flow-control-cookbook.md --------------------------------------------------------

PLAN_PRIORITY = {"free": 0, "pro": 300, "business": 600}


def by_plan(video_id: int, user_id: int, plan: str = "free") -> int:
    return PLAN_PRIORITY[plan]


@durable_task(
    name="docs.cookbook_transcode",
    concurrency=[
        Concurrency(limit=1, key="user_id"),
        Concurrency(limit=1, scope="global", name="docs-gpu-encoders"),  # 20 in the docs
    ],
    priority=by_plan,
)
def cookbook_transcode(video_id: int, user_id: int, plan: str = "free") -> dict:
    rendition = step.run("encode", encode, video_id)
    return step.run("publish", publish, video_id, rendition, atomic=True)


def test_cookbook__paid_users_first_in_the_shared_encoder_backlog(durable):
    running = cookbook_transcode.delay(1, 1)  # takes the (only) encoder
    free = [cookbook_transcode.delay(2 + n, 2 + n) for n in range(3)]  # other users wait for it
    business = cookbook_transcode.delay(9, 9, "business")
    assert get_run(running.id).status == "queued"
    assert {get_run(r.id).status for r in [*free, business]} == {"pending"}

    assert durable.run_next() == running.id  # it ends and hands the encoder on...
    assert get_run(business.id).status == "queued"  # ...to the business upload, enqueued last
    assert {get_run(r.id).status for r in free} == {"pending"}
    durable.run_until_idle()
    assert {get_run(r.id).status for r in [*free, business]} == {"completed"}
    assert set(Slot.objects.filter(key__startswith="docs-gpu").values_list("in_use", flat=True)) == {0}


MAPS_API = Concurrency(limit=2, scope="global", name="docs-maps-api")  # 5 in the docs
most_in_flight: list[int] = [0]


def maps_call(payload):
    held = Run.objects.filter(task_name__in=("docs.geocode", "docs.route"), holds_slots=True).count()
    most_in_flight[0] = max(most_in_flight[0], held)
    return {"payload": payload}


@durable_task(name="docs.geocode", concurrency=MAPS_API, retries=5)
def geocode(address: str) -> dict:
    return step.run("call", maps_call, address)


@durable_task(name="docs.route", concurrency=MAPS_API, retries=5)
def route(points: list[dict]) -> dict:
    return step.run("call", maps_call, points)


def load_addresses(order_id):
    return [f"{n} Main St" for n in range(5)]


@durable_task(name="docs.plan_delivery")
def plan_delivery(order_id: int) -> dict:
    addresses = step.run("load", load_addresses, order_id)
    points = step.gather("geocode", [geocode.s(a) for a in addresses])
    return step.invoke("route", route.s(points))


def test_cookbook__a_global_api_quota_over_child_runs(durable):
    most_in_flight[0] = 0
    run = plan_delivery.delay(1)
    durable.run_until_idle()
    assert durable.result(run.id)["payload"][0]["payload"] == "0 Main St"
    assert 1 <= most_in_flight[0] <= 2  # five geocodes and a route, never more than the quota at once
    children = Run.objects.filter(parent_id=run.id)
    assert children.count() == 6 and set(children.values_list("slot_key1", flat=True)) == {"docs-maps-api:*"}
    assert set(Slot.objects.filter(key__startswith="docs-maps-api").values_list("in_use", flat=True)) == {0}


def today() -> str:
    return date.today().isoformat()


def aggregate_orders(day):
    return {"day": day, "orders": 3}


def store_rollup(day, totals):
    return totals


@durable_task(name="docs.nightly_rollup", singleton=Singleton(mode="skip"))
def nightly_rollup() -> dict:
    day = step.run("day", today)
    totals = step.run("aggregate", aggregate_orders, day)
    return step.run("store", store_rollup, day, totals, atomic=True)


def test_cookbook__the_nightly_job_never_overlaps(durable):
    tonight = nightly_rollup.delay()
    second_beat = nightly_rollup.delay()
    assert get_run(second_beat.id).status == "skipped"
    durable.run_until_idle()
    assert durable.result(tonight.id)["orders"] == 3
    assert get_run(nightly_rollup.delay().id).status == "queued"  # the next night's


def render(tenant, report_id):
    return f"{tenant}/{report_id}"


@durable_task(
    name="reports.export",
    concurrency=Concurrency(limit=4, fair_key="tenant", fair_weight={"enterprise-co": 2}),
)
def export(tenant, report_id):
    return step.run("render", render, tenant, report_id)


def test_cookbook__fair_exports_per_tenant_with_a_tunable_limit(durable):
    from celery_durable import set_limit

    first = [export.delay("big-co", n) for n in range(4)]  # the 4 slots
    waiting = [export.delay("big-co", n) for n in range(4, 40)] + [export.delay("small-co", 0)]
    waiting += [export.delay("enterprise-co", n) for n in range(3)]
    assert {get_run(r.id).status for r in first} == {"queued"}
    set_limit(export, None, 12)  # raise: 8 more exports start now
    queued = [r for r in waiting if get_run(r.id).status == "queued"]
    tenants = sorted(get_run(r.id).args_value[0] for r in queued)
    # Round robin by the tenants' text order, two turns in a row for enterprise-co: big-co,
    # enterprise-co x2, small-co, big-co, enterprise-co (its last), big-co, big-co.
    assert tenants == ["big-co"] * 4 + ["enterprise-co"] * 3 + ["small-co"]
    set_limit(export, None, None)  # back to 4; running exports finish
    assert Slot.objects.get(key="reports.export:#0:*").override is None
    durable.run_until_idle()
    assert all(get_run(r.id).status == "completed" for r in first + waiting)


# --- batch.md and the cookbook's digest ------------------------------------------------

sent_digests: list[tuple[int, list[str]]] = []


def send_digest_email(user_id, lines):
    sent_digests.append((user_id, lines))
    return True


@durable_task(name="docs.notification_digest", batch=Batch(max_size=50, wait=timedelta(minutes=1), key="user_id"))
def notification_digest(items: list[dict]) -> int:
    user_id = items[0]["user_id"]
    lines = [item["text"] for item in items]
    step.run("send", send_digest_email, user_id, lines)
    return len(lines)


def test_cookbook__one_digest_per_user(durable):
    sent_digests.clear()
    for n in range(50):
        durable.clock.advance(timedelta(microseconds=1))
        notification_digest.delay(user_id=7, text=f"note {n}")
    lone = notification_digest.delay(user_id=8, text="hello")
    durable.run_until_idle(advance_clock=False)  # the 50th notification started user 7's digest
    assert sent_digests == [(7, [f"note {n}" for n in range(50)])]
    assert batch_run(lone.id) is None
    durable.run_until_idle()  # a minute later, the lone one goes out
    assert sent_digests[-1] == (8, ["hello"])
    assert durable.result(batch_run(lone.id).id) == 1
