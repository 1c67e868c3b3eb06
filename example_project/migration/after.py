"""AFTER: the tasks of ``before.py``, converted to celery-durable task by task.

1. The chain and its Redis hash become **one durable task with three steps**: each step's
   result is checkpointed, so a retry, a crash or a redeploy resumes after the last
   finished step. No hand-kept state.
2. The Redis lock becomes ``concurrency=Concurrency(limit=1, key="user_id")``: a second
   upload of the same user waits in the database (``pending``) and starts the moment the
   first ends; a dead worker's run resumes, no lock to expire.
3. ``autoretry_for`` + ``retry_backoff`` become the task's ``retries`` / ``retry_backoff``
   options (per step); the 429's ``self.retry(countdown=...)`` becomes
   ``raise RetryAfter(seconds)``; errors that retrying cannot fix raise ``NonRetriableError``.
4. The beat job's lock becomes ``singleton=Singleton(mode="skip")``.

Callers keep calling ``publish_upload.delay(upload_id, user_id)``; beat keeps its schedule.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from celery_durable import Concurrency, NonRetriableError, RetryAfter, Singleton, durable_task, step

from . import services
from .services import PartnerRateLimited, PartnerUnavailable


def push(upload_id: int, url: str) -> dict[str, str]:
    """The partner call, with its errors sorted into "retry later", "retry with backoff", "give up"."""
    try:
        return services.push_to_partner(upload_id, url)
    except PartnerRateLimited as exc:
        raise RetryAfter(exc.retry_after, str(exc)) from exc  # was: self.retry(countdown=...)
    except PartnerUnavailable:
        raise  # was: autoretry_for=(PartnerUnavailable,): retried with the task's backoff
    except Exception as exc:
        # Before, any other error failed the task at once; a step would retry it.
        raise NonRetriableError(f"the partner rejected upload {upload_id}: {exc}") from exc


@durable_task(
    name="migration.after.publish_upload",
    concurrency=Concurrency(limit=1, key="user_id"),  # was: the SET NX EX lock in transcode
    retries=5,  # was: push's max_retries=5 (now the budget of every step)
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
)
def publish_upload(upload_id: int, user_id: int) -> dict[str, Any]:
    """Probe, transcode and push an upload: one run per upload, one at a time per user."""
    info = step.run("probe", services.probe, upload_id)
    transcoded = step.run("transcode", services.transcode, upload_id)
    pushed = step.run("push", push, upload_id, transcoded["url"])
    return {"upload": upload_id, "duration_seconds": info["duration_seconds"], **pushed}


def today() -> str:
    return date.today().isoformat()


@durable_task(name="migration.after.nightly_usage_report", singleton=Singleton(mode="skip"))
def nightly_usage_report() -> dict[str, str]:
    """Run by beat at 02:00; while yesterday's is unfinished, tonight's call is skipped."""
    day = step.run("day", today)  # checkpointed: a run resumed after midnight keeps its day
    return step.run("report", services.usage_report, day)
