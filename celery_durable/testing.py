"""Drive durable runs in-process, against the real database, with no broker and no worker.

``DurableTestRunner`` executes queued runs synchronously through the same code a worker
runs, on a controllable clock: retry backoffs (and, later, sleeps) are skipped by moving
the clock, step failures can be injected, and each run's step history can be asserted::

    def test_checkout(durable):              # the pytest fixture of this module
        run = checkout.delay(order_id=7)
        durable.run_until_idle()
        assert durable.result(run.id) == "paid"
        assert durable.history(run.id) == [("reserve", "completed", 1), ("charge", "completed", 1)]

It works inside pytest-django's ``db`` fixture (no commit is needed: runs are found in the
database, not through on-commit messages).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore

from . import clock as clock_module
from . import serialization
from .integration import publish as publish_module
from .runtime import steps as steps_module
from .runtime.replaycheck import ReplayVerdict
from .store.messages import RunMessage

if TYPE_CHECKING:
    from .engine.deploycheck import DeployReport


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime.now(UTC)

    def now(self) -> datetime:
        """The current fake time."""
        return self.current

    def advance(self, by: timedelta | float) -> datetime:
        """Move the clock forward by ``by`` (seconds or ``timedelta``)."""
        self.current += by if isinstance(by, timedelta) else timedelta(seconds=by)
        return self.current


@dataclass
class DurableTestRunner:
    """Executes durable runs synchronously in this process on a fake clock."""

    clock: FakeClock = field(default_factory=FakeClock)
    published: list[RunMessage] = field(default_factory=list)
    executions: int = 0
    _faults: dict[tuple[str, str], list[BaseException]] = field(default_factory=dict)

    def __enter__(self) -> DurableTestRunner:
        publish_module.dispatch_override = self.published.append
        steps_module.fault_hook = self._fault
        clock_module.set_clock(self.clock.now)
        return self

    def __exit__(self, *exc: Any) -> None:
        publish_module.dispatch_override = None
        steps_module.fault_hook = None
        clock_module.set_clock(None)

    def fail_step(self, task_name: str, step_id: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` attempts of ``step_id`` in ``task_name`` raise ``error``."""
        self._faults.setdefault((task_name, step_id), []).extend([error] * times)

    def _fault(self, task_name: str, step_id: str) -> BaseException | None:
        pending = self._faults.get((task_name, step_id))
        return pending.pop(0) if pending else None

    def run_next(self) -> str | None:
        """Execute the oldest due queued run once; return its id, or ``None`` if none is due.

        The run's own failure (its error recorded on the run, a cancellation, a skip) is not
        raised: :meth:`result` raises it. Any other exception (the library's, or one raised
        after the run recorded its outcome) propagates, with a note naming the run.
        """
        from celery import current_app

        from .models import Run
        from .states import RunStatus

        due = (
            Run.objects.filter(status=RunStatus.QUEUED)
            .exclude(wake_at__gt=self.clock.now())
            .order_by("created_at", "id")
            .values_list("id", "task_name", "args", "kwargs", "durable")
            .first()
        )
        if due is None:
            return None
        run_id, task_name, args, kwargs, durable = due
        task = current_app.tasks[task_name]
        if not durable:
            self._run_plain_child(task, run_id, args, kwargs)
            return str(run_id)
        task.push_request(id=run_id, called_directly=False, is_eager=False, retries=0)
        try:
            self.executions += 1
            task(*serialization.loads(args), **serialization.loads(kwargs))
        except Ignore:
            pass  # suspended, retrying, or not this execution's any more: the row says which
        except Exception as exc:
            if not _recorded_outcome(str(run_id), exc):
                exc.add_note(f"celery_durable.testing: raised while executing run {run_id}, not recorded on it")
                raise
            # The run's own failure (or cancellation) is on its row; result() raises it.
        finally:
            task.pop_request()
        return str(run_id)

    def _run_plain_child(self, task: Any, run_id: str, args: str, kwargs: str) -> None:
        """A plain Celery task invoked as a child: run it in-process (``apply``) and report it."""
        from .conf import error_text_limit
        from .runtime.errors import error_record
        from .store.suspension import finish_plain_child, mark_plain_child_started

        mark_plain_child_started(run_id)
        self.executions += 1
        outcome = task.apply(args=serialization.loads(args), kwargs=serialization.loads(kwargs), task_id=run_id)
        if outcome.successful():
            finish_plain_child(run_id, True, serialization.dumps(outcome.result, "child result"), None)
        else:
            error = serialization.dumps(error_record(outcome.result, error_text_limit()), "error record")
            finish_plain_child(run_id, False, None, error)

    def wake_due(self) -> int:
        """Do what the waker does now: queue due sleeps, waits and timed-out runs, form due batches."""
        from .engine.batching import form_due
        from .engine.cancel import finish
        from .integration.registry import CeleryPublisher
        from .store.cancellation import take_timed_out
        from .store.recovery import take_due

        woken = len(take_due(10_000))
        timed_out = take_timed_out(10_000)
        finish(timed_out, CeleryPublisher())
        formed = form_due(CeleryPublisher())
        return woken + len(timed_out.cancelled) + formed

    def run_until_idle(self, max_executions: int = 10_000, advance_clock: bool = True) -> int:
        """Execute runs until none is due; with ``advance_clock``, jump to each wake time.

        Returns the number of executions.
        """
        from django.db.models import Min

        from .models import BatchItem, Run
        from .states import FINISHED as FINISHED_STATUSES
        from .states import RunStatus

        count = 0
        while count < max_executions:
            if self.run_next() is not None:
                count += 1
                continue
            if self.wake_due():
                continue
            if not advance_clock:
                break
            # A paused run keeps its start time for resume: nothing to jump to while it is paused.
            unfinished = Run.objects.exclude(status__in=[*FINISHED_STATUSES, RunStatus.PAUSED])
            moments = [
                unfinished.aggregate(Min("wake_at"))["wake_at__min"],
                unfinished.aggregate(Min("finish_by"))["finish_by__min"],
                unfinished.filter(started_at__isnull=True).aggregate(Min("start_by"))["start_by__min"],
                BatchItem.objects.filter(run__isnull=True).aggregate(Min("due_at"))["due_at__min"],
            ]
            upcoming = [moment for moment in moments if moment is not None]
            if not upcoming:
                break
            self.clock.current = max(self.clock.current, min(upcoming) + timedelta(microseconds=1))
        return count

    def send_event(self, name: str, data: dict[str, Any] | None = None, *, id: str | None = None) -> Any:
        """``celery_durable.send_event`` (on the runner's clock)."""
        from .integration.actions import send_event

        return send_event(name, data, id=id)

    def check_replay(self, run_id: str) -> ReplayVerdict:
        """Replay the recorded history of ``run_id`` against the code as it is now.

        No step body runs and nothing is written; ``verdict.ok`` is ``False`` with a
        ``cause`` (``"nondeterminism"``, ``"step-not-reached"``, ``"task-removed"``,
        ``"error"``) where a real execution of the run would fail. What
        ``manage.py durable_check_deploy`` does for every unfinished run.
        """
        from .engine.deploycheck import check_run
        from .integration.registry import CeleryRegistry

        return check_run(run_id, CeleryRegistry())

    def check_deploy(self) -> DeployReport:
        """:meth:`check_replay` of every unfinished run that has a history (``report.ok``, ``report.failures``)."""
        from .engine.deploycheck import check_deploy
        from .integration.registry import CeleryRegistry

        return check_deploy(CeleryRegistry())

    def result(self, run_id: str) -> Any:
        """The run's final value; raises ``RunNotFinished`` (with its stored error) otherwise."""
        from .store.runs import get

        run = get(run_id)
        if run.status == "completed":
            return run.result_value
        raise RunNotFinished(run_id, run.status, run.error_value)

    def history(self, run_id: str) -> list[tuple[str, str, int]]:
        """The run's steps as ``(step_id, status, attempts)`` in the order they were reached."""
        from .models import Step

        return list(Step.objects.filter(run_id=run_id).order_by("id").values_list("step_id", "status", "attempts"))


def _recorded_outcome(run_id: str, exc: Exception) -> bool:
    """Whether ``exc`` is how run ``run_id`` ended, as recorded on its row.

    A failed run stores its error's type, module and message; a cancelled or skipped run is
    answered with ``RunCancelled`` or ``RunSkipped``. Anything else did not come from the run.
    """
    from .exceptions import RunCancelled, RunSkipped
    from .models import Run
    from .states import RunStatus

    row = Run.objects.filter(id=run_id).values_list("status", "error").first()
    if row is None:
        return False
    status, error = row
    if status == RunStatus.CANCELLED:
        return isinstance(exc, RunCancelled)
    if status == RunStatus.SKIPPED:
        return isinstance(exc, RunSkipped)
    if status != RunStatus.FAILED or error is None:
        return False
    record = serialization.loads(error)
    if not isinstance(record, dict):
        return False
    from .conf import error_text_limit
    from .runtime.errors import cap_text

    kind = type(exc)
    return (record.get("type"), record.get("module"), record.get("message")) == (
        kind.__qualname__,
        kind.__module__,
        cap_text(str(exc), error_text_limit()),  # as the run stored it
    )


class RunNotFinished(AssertionError):
    """Raised by :meth:`DurableTestRunner.result` for a run that did not complete."""

    def __init__(self, run_id: str, status: str, error: dict[str, Any] | None) -> None:
        super().__init__(run_id, status, error)
        self.run_id = run_id
        self.status = status
        self.error = error

    def __str__(self) -> str:
        detail = f": {self.error['type']}: {self.error['message']}" if self.error else ""
        return f"run {self.run_id} is {self.status}{detail}"


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional for users
    pass
else:

    @pytest.fixture
    def durable(db: Any) -> Iterator[DurableTestRunner]:
        """A :class:`DurableTestRunner` for the test (needs pytest-django's ``db``)."""
        with DurableTestRunner() as runner:
            yield runner
