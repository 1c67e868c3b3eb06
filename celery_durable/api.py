"""Run control and inspection: ``send_event``, ``get_run``, ``replay``, ``fork``, ``cancel``.

The public facade: re-exported by ``celery_durable``; nothing in the package imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .dbcheck import translated

if TYPE_CHECKING:
    from .models import Run
    from .runtime.events import Event


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
