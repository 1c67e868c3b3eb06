"""Inline hand-off: a process that frees a concurrency slot runs the promoted run itself.

When a run of a task with ``concurrency=`` finishes, its slot goes to the next run of the
key's backlog in the same transaction (``slots.release``). Publishing that run and waiting
for a worker to fetch it costs a broker round trip on every hand-off, and with a small
limit that round trip, not the work, sets the pace of a backlog. So the process that
released the slot executes the promoted run right away, after its own result was stored
(``DurableTask.after_return``), up to ``INLINE_HANDOFF_RUNS`` runs in a row; everything else
is published as usual.

The promoted run is a normal run: claimed with a lease (a crash here is recovered by the
reaper), its result stored in the result backend, its slots released and handed on in turn.
Only runs of the same task without an explicit destination are taken inline, so routing
decisions stay with the broker. Celery's per-task signals and events are not sent for them.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery.exceptions import Ignore

from .. import serialization, signals
from ..conf import get_settings
from ..store.messages import DESTINATION, RunMessage


class DurableTask(Protocol):
    """What the hand-off needs of a durable task (``integration.task.DurableTask``)."""

    name: str
    backend: Any
    ignore_result: bool

    @property
    def request(self) -> Any: ...

    @property
    def time_limit(self) -> float | None: ...

    @property
    def soft_time_limit(self) -> float | None: ...

    def push_request(self, *args: Any, **kwargs: Any) -> None: ...

    def pop_request(self) -> None: ...

    def execute_run(
        self, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], claimed: RunMessage | None = None
    ) -> Any: ...


logger = logging.getLogger("celery_durable")

PROMOTED = "durable_promoted"  # attribute of the task's request: messages waiting for after_return
BUDGET = "durable_inline_budget"  # attribute of an inline run's request: how many more may follow it


def eligible(task: DurableTask, message: RunMessage) -> bool:
    """A promoted run this process may execute: same task, no destination of its own."""
    if message.task_name != task.name or message.countdown:
        return False
    options = serialization.loads(message.options or "{}")
    return not any(options.get(key) for key in DESTINATION)


def budget_after(task: DurableTask) -> int:
    """How many promoted runs may still follow the current execution here (0: none).

    A worker delivery starts a budget of ``INLINE_HANDOFF_RUNS``; each run executed inline
    carries what is left of it (:func:`run_here`); an execution without a delivery (e.g.
    ``celery_durable.testing``) has none, and neither has a delivery under a Celery time
    limit (:func:`time_limited`). When it is above 0 the execution's completion may claim
    the run it hands its slot to for this process.
    """
    request = task.request
    left = getattr(request, BUDGET, None)
    if left is not None:
        return int(left)
    if not request.delivery_info or time_limited(task):
        return 0
    return get_settings().INLINE_HANDOFF_RUNS


def time_limited(task: DurableTask) -> bool:
    """Whether a Celery time limit applies to the current delivery.

    Celery times the delivery, not each run: runs executed inline would spend the delivered
    run's ``time_limit`` / ``soft_time_limit`` and be interrupted for what the runs before
    them took. The limits come from the message (``apply_async(time_limit=...)``), the task
    (its attributes, which default to ``task_time_limit`` / ``task_soft_time_limit`` and
    which Celery's ``time_limit`` remote control changes) or the worker
    (``--time-limit`` / ``--soft-time-limit``, noted by :func:`note_worker_time_limits`).
    """
    request = task.request
    return any((*(request.timelimit or ()), task.time_limit, task.soft_time_limit, *_worker_time_limits))


_worker_time_limits: tuple[float | None, float | None] = (None, None)


def note_worker_time_limits(sender: Any = None, **kwargs: Any) -> None:
    """``worker_init`` receiver: keep the worker's own time limits (inherited by its pool processes)."""
    global _worker_time_limits
    _worker_time_limits = (getattr(sender, "time_limit", None), getattr(sender, "soft_time_limit", None))


def run_here(task: DurableTask, messages: list[RunMessage], budget: int) -> list[RunMessage]:
    """Execute up to ``budget`` eligible promoted runs here; return the messages to publish.

    A run the hand-over claimed for this process (``RunMessage.claimed``) is always among
    them: it was claimed only within the budget (:func:`budget_after`) and only when
    eligible (``handover.InlineClaim`` is :func:`eligible` in SQL, or stricter).
    """
    pending = list(messages)
    rest: list[RunMessage] = []
    while pending:
        message = pending.pop(0)
        if budget <= 0 or not eligible(task, message):
            rest.append(message)
            continue
        budget -= 1
        pending[:0] = _execute(task, message, budget)  # its own hand-off goes first: the same key
    return rest


def _execute(task: DurableTask, message: RunMessage, budget: int) -> list[RunMessage]:
    """Run one promoted run as if its message had arrived; store its outcome; return its promotions.

    ``budget``: how many more may follow it here.
    """
    args = serialization.loads(message.args)
    kwargs = serialization.loads(message.kwargs)
    outer = task.request
    task.push_request(
        id=message.run_id,
        args=args,
        kwargs=kwargs,
        delivery_info=outer.delivery_info,
        hostname=outer.hostname,
        headers=outer.headers,
        called_directly=False,
        is_eager=False,
        retries=0,
        **{BUDGET: max(budget, 0)},
    )
    request = task.request
    signals.send(signals.run_handed_off, task.name, message.run_id, from_run_id=outer.id)
    try:
        _store_outcome(task, message, args, kwargs, request)
        return take_promoted(task)
    finally:
        task.pop_request()


def _store_outcome(task: DurableTask, message: RunMessage, args: Any, kwargs: dict[str, Any], request: Any) -> None:
    """Execute the run and tell the result backend, as Celery's tracer would."""
    run_id = message.run_id
    try:
        try:
            value = task.execute_run(run_id, args, kwargs, claimed=message if message.claimed else None)
        except Ignore:
            return  # suspended or dropped: no result yet
        except Exception as exc:
            if not task.ignore_result:
                task.backend.mark_as_failure(run_id, exc, request=request)
            return
        if not task.ignore_result:
            task.backend.mark_as_done(run_id, value, request=request)
    except Exception:
        logger.warning("durable run %s: inline hand-off failed; the services recover it", run_id, exc_info=True)


def take_promoted(task: DurableTask) -> list[RunMessage]:
    """The promoted runs the current execution stashed for :func:`run_here` (and forget them)."""
    promoted: list[RunMessage] = getattr(task.request, PROMOTED, None) or []
    setattr(task.request, PROMOTED, [])
    return promoted


def stash(task: DurableTask, messages: list[RunMessage]) -> None:
    """Keep promoted runs on the current request until the result is stored."""
    setattr(task.request, PROMOTED, [*(getattr(task.request, PROMOTED, None) or []), *messages])
