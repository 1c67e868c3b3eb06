"""Tasks of the peer benchmark that bench/tasks.py and bench/flow_app.py do not have.

* Plain Celery per-key concurrency, the way it is usually hand-written: a celery-once style
  Redis lock (``SET key token NX EX``), here one lock key per slot for a limit of 5; a run
  that finds every slot taken calls ``self.retry(countdown=...)``.
* Plain Celery "sleep": a task that schedules its second half with ``countdown=1``.
* The durable 1-second sleep (``step.sleep``), then one step.

Timestamps go to Redis lists in the broker's db (flushed by the driver), one round trip per
run, so the driver reads the figures from one clock (this machine's ``time.time()``).
"""

from __future__ import annotations

import time

from celery import shared_task

from celery_durable import durable_task, step

LIMIT = 5  # slots per key, as bench/flow_app.py's Concurrency(limit=5)
LOCK_TTL = 60  # seconds (celery-once's default timeout is 60 min; a crashed holder frees its slot after this)
RETRY_COUNTDOWN = 1.0  # seconds before a run that found no free slot is tried again
LOCK_STAMPS = "peers:lock:stamps"  # "start end" of every locked body
LOCK_MISSES = "peers:lock:misses"  # runs that found every slot taken (one retry each)
SLEEP_STAMPS = "peers:sleep:stamps"  # "due woke" of every countdown sleeper

# Compare-and-delete: only the holder's token frees the slot (celery-once deletes blindly).
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

_client = None


def redis_client():
    """One client per process, on the broker's Redis db."""
    global _client
    if _client is None:
        import redis
        from django.conf import settings

        _client = redis.Redis.from_url(f"{settings.REDIS_URL}/{settings.BROKER_DB}")
    return _client


def inc(x: int) -> int:
    return x + 1


@shared_task(name="bench.peers.locked", bind=True, max_retries=None)
def locked(self, key: str, i: int, seconds: float = 0.0) -> int:
    """A run limited to LIMIT at a time per ``key`` by Redis locks, retried with a countdown."""
    r = redis_client()
    token = self.request.id
    for slot in range(LIMIT):
        name = f"peers:lock:{key}:{slot}"
        if r.set(name, token, nx=True, ex=LOCK_TTL):
            break
    else:
        r.incr(LOCK_MISSES)
        raise self.retry(countdown=RETRY_COUNTDOWN)
    started = time.time()
    try:
        if seconds:
            time.sleep(seconds)
        return inc(i)
    finally:
        pipe = r.pipeline(transaction=False)
        pipe.eval(RELEASE, 1, name, token)
        pipe.rpush(LOCK_STAMPS, f"{started:.6f} {time.time():.6f}")
        pipe.execute()


@shared_task(name="bench.peers.countdown_start")
def countdown_start(i: int) -> None:
    """First half of a plain-Celery 1-second sleep: schedule the second half 1 s from now."""
    due = time.time() + 1.0
    countdown_end.apply_async((i, due), countdown=1.0)


@shared_task(name="bench.peers.countdown_end")
def countdown_end(i: int, due: float) -> int:
    """Second half: record when it ran against when it was due."""
    woke = time.time()
    redis_client().rpush(SLEEP_STAMPS, f"{due:.6f} {woke:.6f}")
    return inc(i)


@durable_task(name="bench.peers.sleeper")
def sleeper(i: int) -> int:
    """A durable 1-second sleep (the run is suspended, no worker held), then one step."""
    step.sleep("s", 1)
    return step.run("after", inc, i)
