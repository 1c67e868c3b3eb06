"""The migration guide's worked example (example_project/migration, docs/howto/migrate.md).

``before``: plain Celery with a Redis lock, hand-kept state in Redis and countdown retries,
against real Redis. ``after``: the same tasks converted to celery-durable, driven by the
``durable`` fixture on the real database.
"""

import sys
import uuid
from pathlib import Path

import pytest
from celery.exceptions import Retry

from tests.conftest import service_unavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "example_project"))

from migration import after, before
from migration.services import PartnerRateLimited, PartnerRejected, PartnerUnavailable, systems

from celery_durable import get_run
from celery_durable.models import Run, Step

REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture(autouse=True)
def fresh_systems():
    systems.reset()
    yield
    systems.reset()


@pytest.fixture
def r(settings):
    settings.MIGRATION_REDIS_URL = REDIS_URL
    client = before.redis_client()
    try:
        client.ping()
    except Exception as exc:
        service_unavailable(f"redis at {REDIS_URL} is unreachable: {exc}")
    created: list[str] = []
    yield client, created
    if created:
        client.delete(*created)


def ids():
    """An upload id and a user id no other test run uses (the Redis database is shared)."""
    n = uuid.uuid4().int % 10**9
    return n, n + 1


def as_worker(task, *args):
    """Run a plain task's body as its worker would (a request that is not a direct call)."""
    task.push_request(id=str(uuid.uuid4()), called_directly=False, retries=0, args=args, kwargs={})
    try:
        return task.run(*args)
    finally:
        task.pop_request()


# --- before: plain Celery ------------------------------------------------------------------


def test_before__the_chain_keeps_its_progress_by_hand_in_redis(r):
    client, created = r
    upload, user = ids()
    created += [before.state_key(upload)]
    info = as_worker(before.probe, upload)
    transcoded = as_worker(before.transcode, info, user)
    pushed = as_worker(before.push, transcoded)
    assert pushed["partner_id"] == f"p-{upload}"
    assert client.hgetall(before.state_key(upload))["status"] == "published"
    # A re-sent chain skips what its hand-kept state says was done.
    as_worker(before.probe, upload)
    as_worker(before.transcode, info, user)
    assert systems.calls == [("probe", upload), ("transcode", upload), ("push", upload)]


def test_before__a_dead_workers_lock_blocks_the_user_until_it_expires(r):
    client, created = r
    upload, user = ids()
    lock = f"lock:transcode:user:{user}"
    created += [before.state_key(upload), lock]
    client.set(lock, "token-of-a-killed-worker", nx=True, ex=before.LOCK_SECONDS)  # what kill -9 leaves
    with pytest.raises(Retry) as retry:
        as_worker(before.transcode, {"upload": upload}, user)
    assert retry.value.when == 10  # back through the broker in 10 s, again and again
    assert client.ttl(lock) > before.LOCK_SECONDS - 60  # ...for up to ten minutes
    assert systems.calls == []

    client.delete(lock)  # expired at last
    assert as_worker(before.transcode, {"upload": upload}, user)["url"].endswith("1080p.mp4")
    assert client.get(lock) is None  # released by its owner


def test_before__a_429_retries_with_its_retry_after_and_timeouts_with_a_backoff(r):
    _client, created = r
    upload, _user = ids()
    created += [before.state_key(upload)]
    systems.partner_answers[:] = [PartnerRateLimited(30), PartnerUnavailable("timeout")]
    transcoded = {"upload": upload, "url": "https://cdn.example.com/x.mp4"}
    with pytest.raises(Retry) as rate_limited:
        as_worker(before.push, transcoded)
    assert rate_limited.value.when == 30
    with pytest.raises(Retry) as unavailable:
        as_worker(before.push, transcoded)  # autoretry_for + retry_backoff=5, with jitter
    assert 0 <= unavailable.value.when <= 5


def test_before__the_nightly_report_skips_while_its_lock_is_held(r):
    client, created = r
    lock = "lock:nightly_usage_report"
    if not client.set(lock, "1", nx=True, ex=60):
        service_unavailable(f"redis: another test run holds {lock} (it expires within 60 s)")
    created += [lock]
    assert as_worker(before.nightly_usage_report) == {"skipped": "the previous report is still running"}
    client.delete(lock)
    assert as_worker(before.nightly_usage_report)["rows"] == "42"


# --- after: celery-durable -----------------------------------------------------------------


def test_after__three_checkpointed_steps_and_no_hand_kept_state(durable):
    run = after.publish_upload.delay(1, 7)
    durable.run_until_idle()
    assert durable.result(run.id) == {
        "upload": 1,
        "duration_seconds": 61,
        "partner_id": "p-1",
        "url": "https://cdn.example.com/uploads/1/1080p.mp4",
    }
    assert durable.history(run.id) == [
        ("probe", "completed", 1),
        ("transcode", "completed", 1),
        ("push", "completed", 1),
    ]


def test_after__one_upload_per_user_at_a_time_without_a_lock(durable):
    first, second = after.publish_upload.delay(1, 7), after.publish_upload.delay(2, 7)
    other = after.publish_upload.delay(3, 8)
    assert [get_run(x.id).status for x in (first, second, other)] == ["queued", "pending", "queued"]
    durable.run_until_idle()
    assert {get_run(x.id).status for x in (first, second, other)} == {"completed"}
    done = {x.id: get_run(x.id) for x in (first, second)}
    assert done[second.id].started_at >= done[first.id].finished_at


def test_after__a_429_retries_the_push_alone_after_its_retry_after(durable):
    systems.partner_answers[:] = [PartnerRateLimited(30), PartnerUnavailable("timeout")]
    run = after.publish_upload.delay(1, 7)
    durable.run_next()
    assert get_run(run.id).status == "queued"
    assert (get_run(run.id).wake_at - durable.clock.now()).total_seconds() == 30
    durable.run_until_idle()
    assert durable.result(run.id)["partner_id"] == "p-1"
    assert Step.objects.get(run_id=run.id, step_id="push").attempts == 3
    assert systems.calls == [("probe", 1), ("transcode", 1), ("push", 1), ("push", 1), ("push", 1)]


def test_after__a_rejected_push_fails_the_run_at_once(durable):
    systems.partner_answers[:] = [PartnerRejected("400 Bad Request")]
    run = after.publish_upload.delay(1, 7)
    durable.run_until_idle()
    failed = get_run(run.id)
    assert failed.status == "failed" and failed.error_value["type"] == "NonRetriableError"
    assert Step.objects.get(run_id=run.id, step_id="push").attempts == 1


def test_after__the_nightly_report_never_overlaps(durable):
    tonight = after.nightly_usage_report.delay()
    second = after.nightly_usage_report.delay()
    assert get_run(second.id).status == "skipped"
    durable.run_until_idle()
    assert durable.result(tonight.id)["rows"] == "42"
    assert Run.objects.filter(task_name="migration.after.nightly_usage_report", status="completed").count() == 1
