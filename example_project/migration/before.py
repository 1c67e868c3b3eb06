"""BEFORE: plain Celery, the way such code is usually written.

Publishing an upload: probe it, transcode it (one transcode per user at a time), push it
to a partner whose API rate-limits us, with a nightly usage report that must not overlap.
Four hand-made mechanisms hold it together:

1. a **chain** ``probe | transcode | push`` whose progress is kept **by hand** in a Redis
   hash, so that a retried or re-sent chain skips what was done;
2. a **Redis lock** (``SET NX EX``) for one transcode per user; a task that finds it taken
   retries itself with a countdown;
3. **countdown retries** for the rate-limited API (``autoretry_for`` + ``retry_backoff``,
   and ``self.retry(countdown=Retry-After)`` on a 429);
4. a **beat job guarded by a lock** so that a slow night does not overlap the next one.

docs/howto/migrate.md converts it, task by task, into ``after.py``.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import redis
from celery import chain, shared_task
from django.conf import settings

from . import services
from .services import PartnerRateLimited, PartnerUnavailable

LOCK_SECONDS = 600  # longer than a transcode ever takes... we hope
REPORT_LOCK_SECONDS = 3 * 3600


_clients: dict[str, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """The Redis that holds the locks and the hand-kept state (one client, one pool, per URL)."""
    url = getattr(settings, "MIGRATION_REDIS_URL", "redis://127.0.0.1:6379/0")
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, decode_responses=True)
    return _clients[url]


def state_key(upload_id: int) -> str:
    return f"upload:{upload_id}:state"


# --- 1. the chain, with its state kept by hand --------------------------------------------


def publish_upload(upload_id: int, user_id: int) -> Any:
    """Entry point, called by the upload view."""
    redis_client().hset(state_key(upload_id), mapping={"status": "queued", "user_id": user_id})
    return chain(probe.s(upload_id), transcode.s(user_id), push.s()).delay()


@shared_task(bind=True, name="migration.before.probe")
def probe(self: Any, upload_id: int) -> dict[str, Any]:
    r = redis_client()
    done = r.hget(state_key(upload_id), "probe")
    if done:  # a re-sent chain: don't probe twice
        return {"upload": upload_id, "duration_seconds": int(done)}
    info = services.probe(upload_id)
    r.hset(state_key(upload_id), mapping={"status": "probed", "probe": info["duration_seconds"]})
    return info


# --- 2. one transcode per user: a Redis lock, and retries while it is taken ----------------


@shared_task(bind=True, name="migration.before.transcode", max_retries=None)
def transcode(self: Any, info: dict[str, Any], user_id: int) -> dict[str, Any]:
    upload_id = info["upload"]
    r = redis_client()
    done = r.hget(state_key(upload_id), "url")
    if done:
        return {"upload": upload_id, "url": done}
    lock = f"lock:transcode:user:{user_id}"
    token = uuid.uuid4().hex
    if not r.set(lock, token, nx=True, ex=LOCK_SECONDS):
        # Somebody else's transcode for this user runs (or a dead worker's lock has not
        # expired yet): go round the broker again in 10 s.
        raise self.retry(countdown=10)
    try:
        result = services.transcode(upload_id)
        r.hset(state_key(upload_id), mapping={"status": "transcoded", "url": result["url"]})
        return {"upload": upload_id, "url": result["url"]}
    finally:
        if r.get(lock) == token:  # not atomic, but only ours is deleted (usually)
            r.delete(lock)


# --- 3. a rate-limited partner API: countdown retries ---------------------------------------


@shared_task(
    bind=True,
    name="migration.before.push",
    autoretry_for=(PartnerUnavailable,),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def push(self: Any, transcoded: dict[str, Any]) -> dict[str, str]:
    upload_id = transcoded["upload"]
    r = redis_client()
    if r.hget(state_key(upload_id), "status") == "published":
        return {"partner_id": r.hget(state_key(upload_id), "partner_id") or ""}
    try:
        answer = services.push_to_partner(upload_id, transcoded["url"])
    except PartnerRateLimited as exc:
        raise self.retry(exc=exc, countdown=exc.retry_after) from exc
    r.hset(state_key(upload_id), mapping={"status": "published", "partner_id": answer["partner_id"]})
    return answer


# --- 4. the nightly report, guarded against overlapping ------------------------------------


@shared_task(name="migration.before.nightly_usage_report")
def nightly_usage_report() -> dict[str, str]:
    """Run by beat at 02:00 (CELERY_BEAT_SCHEDULE); yesterday's may still be running."""
    r = redis_client()
    if not r.set("lock:nightly_usage_report", "1", nx=True, ex=REPORT_LOCK_SECONDS):
        return {"skipped": "the previous report is still running"}
    try:
        return services.usage_report(date.today().isoformat())
    finally:
        r.delete("lock:nightly_usage_report")
