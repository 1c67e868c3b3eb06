"""Run control and inspection: events, runs, batches, replays, forks, cancels, pauses, limits, explanations.

The public facade: re-exported by ``celery_durable``; nothing in the package imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .dbcheck import translated

if TYPE_CHECKING:
    from .models import Pause, Run
    from .runtime.events import Event
    from .store.explain import Explanation


@translated
def send_event(name: str, data: dict[str, Any] | None = None, *, id: str | None = None) -> Event:
    """Record an event; start ``on_event`` tasks, resume matching waits, apply ``cancel_on``.

    The same ``id`` within ``IDEMPOTENCY_WINDOW`` (24 h) does nothing twice.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.send_event(name, data, id=id)


def get_run(run_id: str) -> Run:
    """The :class:`~celery_durable.models.Run` with this id, or raise ``RunNotFound``."""
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.get_run(run_id)


def batch_run(call_id: str) -> Run | None:
    """The batch run a call of a batched task joined, or ``None`` while its batch still forms.

    ``call_id`` is the id of the call's ``AsyncResult``. Raises ``RunNotFound`` for an id
    that is no batched call.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.batch_run(call_id)


def replay(run_id: str, from_step: str | None = None) -> Run:
    """Run a failed or cancelled run again, keeping completed steps before ``from_step``.

    Raises ``RunNotFound`` for an unknown id, ``StepNotFound`` for a ``from_step`` the run
    never recorded, and ``RunStateError`` for a run that is not failed or cancelled;
    nothing changes then.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.replay(run_id, from_step)


@translated
def fork(
    run_id: str,
    from_step: str | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Run:
    """Start a new run of the same task that reuses the original's checkpoints before ``from_step``.

    The fork gets a new id, the original's arguments unless ``args``/``kwargs`` are given,
    and copies of the original's *completed* checkpoints recorded before ``from_step``
    (every completed checkpoint when ``from_step`` is ``None``: the fork resumes where the
    original stopped). The original is not changed; any status can be forked. The fork is
    recorded and published like a new call of the task (its flow control applies).

    Raises ``RunNotFound``, ``StepNotFound`` (a ``from_step`` the run never recorded),
    ``SerializationError`` (arguments that are not JSON), ``DurableConfigError`` (``args``
    not a list, ``kwargs`` not a dict) and ``TaskNotRegistered``; nothing is written then.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.fork(run_id, from_step, args, kwargs)


def cancel(run_id: str, reason: str = "") -> Run:
    """Cancel a run (and its unfinished children).

    A queued, sleeping or waiting run is cancelled at once; an executing run stops at its
    next step boundary. Raises ``RunNotFound`` for an unknown id and ``RunStateError`` for
    a run that already finished (nothing changes then).
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.cancel(run_id, reason)


def pause(task_name: str, key: str | None = None, *, by: str = "") -> Pause:
    """Pause a durable task, or only its runs with concurrency key ``key``.

    While paused, no run it covers starts, and an executing one stops at its next step
    boundary (status ``paused``, keeping its concurrency slots); calls are still recorded.
    The pause is a row: it survives restarts. Pausing twice does nothing. ``key`` is a
    concurrency key as stored on the run (``Run.slot_key1``/``slot_key2``, e.g.
    ``"app.sync:user_id:7"``). Raises ``TaskNotRegistered`` for an unknown task and
    ``DurableConfigError`` for a bad name or key (nothing changes then).
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.pause(task_name, key, by)


def resume(task_name: str, key: str | None = None) -> list[str]:
    """Lift the pause of ``task_name`` (or of its ``key``); return the ids of the runs queued again.

    The paused runs go in their original order (priority, then call order), through the
    usual flow control; a run still covered by another pause stays paused. Resuming what is
    not paused does nothing and returns ``[]``.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.resume(task_name, key)


def explain(run_id: str) -> Explanation:
    """Why is this run waiting? The gate that holds it, in words (``str()``) and as data.

    A pure read. Raises ``RunNotFound`` for an unknown id.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    return actions.explain(run_id)


@translated
def set_limit(name_or_task: Any, key: Any, limit: int | None) -> None:
    """Override the concurrency limit of one key at run time; ``None`` removes the override.

    ``name_or_task`` is a durable task (or its name) with one ``Concurrency``, or the
    ``name=`` of a shared ``Concurrency(scope="global")``; ``key`` is the key's value
    (``None`` for a concurrency without ``key``). Lowering a limit stops no running run;
    raising it promotes the backlog at once. Bad input raises ``DurableConfigError`` and
    changes nothing.
    """
    from .integration import actions  # needs Django's app registry: not at import time

    actions.set_limit(name_or_task, key, limit)
