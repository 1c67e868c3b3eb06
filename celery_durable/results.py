"""A Celery result backend that reads durable runs' results from their run rows.

With the default set-up a durable run's result is stored twice: in its run row (where the
engine needs it) and in Celery's result backend (where ``AsyncResult.get()`` looks). Set::

    CELERY_RESULT_BACKEND = "celery_durable.results.DurableResultBackend"
    CELERY_DURABLE = {"PLAIN_RESULT_BACKEND": "django-db"}   # optional: plain tasks' results

and a durable run's result is stored once: the worker writes nothing more when the run
ends, and ``.get()``, ``.state`` and ``.ready()`` of a run id (or of a batched call's id)
read the run row. Every other task id goes to the backend named by
``PLAIN_RESULT_BACKEND`` (any Celery result backend URL); without it, plain tasks have no
result backend, as with no ``CELERY_RESULT_BACKEND`` at all.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.app.backends import by_url
from celery.backends.base import BaseBackend, DisabledBackend
from kombu.utils.url import maybe_sanitize_url

from . import serialization
from .conf import get_settings
from .integration.task import DurableTask
from .models import BatchItem, Run
from .states import RunStatus

# Our run statuses as Celery's task states. A run that has not started, or waits for a slot,
# its start time or a resume, is PENDING; one that started and has not ended (running,
# sleeping, waiting) is STARTED. Cancelled and skipped runs are failures whose error is
# RunCancelled or RunSkipped, as the worker stores them in any other backend.
STATES: dict[str, str] = {
    RunStatus.PENDING: states.PENDING,
    RunStatus.QUEUED: states.PENDING,
    RunStatus.PAUSED: states.PENDING,
    RunStatus.RUNNING: states.STARTED,
    RunStatus.SLEEPING: states.STARTED,
    RunStatus.WAITING: states.STARTED,
    RunStatus.COMPLETED: states.SUCCESS,
    RunStatus.FAILED: states.FAILURE,
    RunStatus.CANCELLED: states.FAILURE,
    RunStatus.SKIPPED: states.FAILURE,
}

_ROW_FIELDS = ("status", "result", "error", "finished_at")


class DurableResultBackend(BaseBackend):
    """Results of durable runs from their run rows; other tasks' from ``PLAIN_RESULT_BACKEND``."""

    # Tells celery-durable's own code that storing a run's outcome here is not needed.
    reads_run_rows = True
    supports_native_join = False

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)
        self._run_ids: set[str] = set()  # ids known to be runs (bounded below)
        plain = get_settings().PLAIN_RESULT_BACKEND
        self._plain_name = "disabled://" if plain is None else maybe_sanitize_url(plain)
        if plain is None:
            self.plain: BaseBackend = DisabledBackend(app=app)
        else:
            found: Any = by_url(plain, app.loader)  # (backend class, URL)
            backend_cls, plain_url = found
            self.plain = backend_cls(app=app, url=plain_url)

    def as_uri(self, include_password: bool = False) -> str:
        """Celery's banner line: this backend and the one plain tasks use."""
        plain = self.plain.as_uri(include_password) or self._plain_name  # django-db has no URL
        return f"durable (run rows) + {plain}"

    # --- which store answers for an id -------------------------------------------------

    def is_run(self, task_id: str, request: Any = None) -> bool:
        """Whether ``task_id`` is a durable run or a batched call (answered from their rows)."""
        if request is not None and getattr(request, "task", None):
            return isinstance(self.app.tasks.get(request.task), DurableTask)  # type: ignore[attr-defined]
        if task_id in self._run_ids:
            return True
        found = (
            Run.objects.filter(pk=task_id, durable=True).exists()
            or BatchItem.objects.filter(pk=task_id).exists()  # its batch may still be forming: PENDING
        )
        if found:
            self.remember_run(task_id)
        return found

    def _refuse_if_disabled(self) -> None:
        if isinstance(self.plain, DisabledBackend):  # Celery's own message: "No result backend is configured..."
            self.plain._is_disabled()  # type: ignore[attr-defined]

    def remember_run(self, run_id: str) -> None:
        """Note that ``run_id`` is a durable run (its message is being published): no query later."""
        if len(self._run_ids) >= 10_000:
            self._run_ids.clear()
        self._run_ids.add(run_id)

    # --- storing: nothing for runs (the engine wrote the row), the rest to the plain backend

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        """Store a plain task's result in the plain backend; a run's is in its row already."""
        if self.is_run(task_id, request):
            return result
        return self.plain.store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)

    def mark_as_started(self, task_id: str, **meta: Any) -> Any:
        """Celery's ``track_started``: a run's row says ``running`` itself."""
        if self.is_run(task_id):
            return None
        return self.plain.mark_as_started(task_id, **meta)

    def mark_as_done(
        self, task_id: str, result: Any, request: Any = None, store_result: bool = True, state: str = states.SUCCESS
    ) -> None:
        """A task succeeded: for a run, its chord part is handled as Celery does, nothing stored."""
        backend: Any = super() if self.is_run(task_id, request) else self.plain
        backend.mark_as_done(task_id, result, request=request, store_result=store_result, state=state)

    def mark_as_failure(
        self,
        task_id: str,
        exc: Exception,
        traceback: str | None = None,
        request: Any = None,
        store_result: bool = True,
        call_errbacks: bool = True,
        state: str = states.FAILURE,
    ) -> None:
        """A task failed: for a run, its errbacks, chain and chord are handled as Celery does, nothing stored."""
        backend: Any = super() if self.is_run(task_id, request) else self.plain
        backend.mark_as_failure(
            task_id,
            exc,
            traceback=traceback,
            request=request,
            store_result=store_result,
            call_errbacks=call_errbacks,
            state=state,
        )

    def mark_as_retry(
        self,
        task_id: str,
        exc: Exception,
        traceback: str | None = None,
        request: Any = None,
        store_result: bool = True,
        state: str = states.RETRY,
    ) -> None:
        """A plain task's retry in the plain backend (a run retries inside its row)."""
        if not self.is_run(task_id, request):
            self.plain.mark_as_retry(
                task_id, exc, traceback=traceback, request=request, store_result=store_result, state=state
            )

    def mark_as_revoked(
        self,
        task_id: str,
        reason: str = "",
        request: Any = None,
        store_result: bool = True,
        state: str = states.REVOKED,
    ) -> None:
        """A revoked plain task in the plain backend (a revoked run is cancelled in its row)."""
        if not self.is_run(task_id, request):
            self.plain.mark_as_revoked(task_id, reason, request=request, store_result=store_result, state=state)

    # --- reading ------------------------------------------------------------------------

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        """The run's state and result from its row, or the plain backend's answer."""
        if self.is_run(task_id):
            return super().get_task_meta(task_id, cache=cache)
        self._refuse_if_disabled()
        return self.plain.get_task_meta(task_id, cache=cache)

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        row = Run.objects.filter(pk=task_id).values_list(*_ROW_FIELDS).first()
        if row is None:  # a batched call: its batch run's outcome
            row = BatchItem.objects.filter(pk=task_id).values_list(*(f"run__{f}" for f in _ROW_FIELDS)).first()
        if row is None or row[0] is None:
            return {"task_id": task_id, "status": states.PENDING, "result": None, "traceback": None, "children": []}
        status, result, error, finished_at = row
        meta: dict[str, Any] = {
            "task_id": task_id,
            "status": STATES[status],
            "result": None,
            "traceback": None,
            "children": [],
            "date_done": finished_at,
        }
        if status == RunStatus.COMPLETED:
            meta["result"] = None if result is None else serialization.loads(result)
        elif meta["status"] == states.FAILURE:
            record = serialization.loads(error) if error else {}
            meta["result"] = {
                "exc_type": record.get("type") or "Exception",
                "exc_module": record.get("module") or None,
                "exc_message": [record.get("message") or status],
            }
            meta["traceback"] = record.get("traceback") or None
        return self.meta_from_decoded(meta)

    def wait_for_pending(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        """``AsyncResult.get()``: a run's row is polled every ``interval``; the rest as the plain backend waits."""
        if self.is_run(result.id):
            return super().wait_for_pending(result, *args, **kwargs)
        self._refuse_if_disabled()
        return self.plain.wait_for_pending(result, *args, **kwargs)

    def add_pending_result(self, result: Any, weak: bool = False, **kwargs: Any) -> Any:
        if self.is_run(result.id):
            return result
        return self.plain.add_pending_result(result, weak=weak, **kwargs)

    def remove_pending_result(self, result: Any) -> Any:
        # Called by ``AsyncResult.__del__``: no query here (the plain backend ignores unknown ids).
        if result.id in self._run_ids:
            return result
        return self.plain.remove_pending_result(result)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # An asynchronous plain backend (Redis, RPC) subscribes to a task's results here. No
        # query: ``publish()`` remembers a run's id just before Celery sends its message.
        if task_id not in self._run_ids:
            self.plain.on_task_call(producer, task_id)

    def forget(self, task_id: str) -> None:
        """Forget a plain task's result; a run's row stays until ``durable_prune`` removes it."""
        self._cache.pop(task_id, None)  # type: ignore[attr-defined]
        if not self.is_run(task_id):
            self.plain.forget(task_id)

    # --- groups, chords and upkeep are the plain backend's --------------------------------

    def save_group(self, group_id: str, result: Any) -> Any:
        return self.plain.save_group(group_id, result)

    def restore_group(self, group_id: str, cache: bool = True) -> Any:
        return self.plain.restore_group(group_id, cache=cache)

    def delete_group(self, group_id: str) -> Any:
        return self.plain.delete_group(group_id)

    def get_group_meta(self, group_id: str, cache: bool = True) -> Any:
        return self.plain.get_group_meta(group_id, cache=cache)

    def ensure_chords_allowed(self) -> None:
        self.plain.ensure_chords_allowed()

    def apply_chord(self, *args: Any, **kwargs: Any) -> Any:
        return self.plain.apply_chord(*args, **kwargs)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> Any:
        return self.plain.on_chord_part_return(request, state, result, **kwargs)

    def add_to_chord(self, chord_id: str, result: Any) -> Any:
        return self.plain.add_to_chord(chord_id, result)

    def set_chord_size(self, group_id: str, chord_size: int) -> Any:
        return self.plain.set_chord_size(group_id, chord_size)

    def cleanup(self) -> Any:
        return self.plain.cleanup()

    def process_cleanup(self) -> Any:
        return self.plain.process_cleanup()
