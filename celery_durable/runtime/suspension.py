"""Steps that suspend the run: sleeps, waits for events, child runs, and sending events.

A suspending step raises ``_Suspend`` with what must be stored; the execution layer
commits it, ends the Celery task, and the run resumes when its time, event or children
come. On replay these steps return their recorded outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import serialization
from ..exceptions import (
    ChildRunFailed,
    DurableConfigError,
    StepNestingError,
    _Cancelled,
    _Suspend,
)
from ..options import Duration, to_seconds
from .events import (
    ANY_OF,
    Event,
    consumption_key,
    validate_event_name,
    validate_event_names,
    validate_match,
    wait_names,
)
from .records import CheckpointWriter, StoredStep

FINISHED = ("completed", "failed", "cancelled", "skipped")


class SuspendingSteps:
    """The suspending half of the step API, mixed into ``StepContext``."""

    _checkpoints: dict[str, StoredStep]
    _writer: CheckpointWriter
    _clock: Callable[[], datetime]
    _current: tuple[str, str] | None
    _run_id: str
    _task_name: str

    # Provided by StepContext.
    def _occurrence(self, step_id: str) -> str:
        raise NotImplementedError

    def _stored(self, sid: str, kind: str, description: str) -> StoredStep | None:
        raise NotImplementedError

    def _record(self, sid: str, kind: str, output: str) -> None:
        self._checkpoints[sid] = StoredStep(sid, kind, "completed", output, 1)

    def _boundary(self) -> None:
        """A step boundary: write the step before's checkpoint; stop here if the run was cancelled."""
        self._writer.flush()
        if self._writer.cancel_requested():
            raise _Cancelled()

    def _begin(self, step_id: str, kind: str, description: str) -> tuple[str, StoredStep | None]:
        self._boundary()
        if self._current is not None:
            raise StepNestingError(
                f"{description} was called inside the body of step {self._current[1]!r}; steps cannot be nested"
            )
        sid = self._occurrence(step_id)
        return sid, self._stored(sid, kind, description)

    # --- sleeps ---------------------------------------------------------------------------

    def sleep(self, step_id: str, duration: Duration) -> None:
        """Suspend the run for ``duration`` (``timedelta`` or seconds); no worker is held meanwhile."""
        seconds = to_seconds(duration, f"step.sleep({step_id!r}) duration", allow_zero=True)
        sid, stored = self._begin(step_id, "sleep", "step.sleep")
        self._sleep(sid, stored, lambda: self._clock() + timedelta(seconds=seconds))

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Suspend the run until ``when`` (an aware datetime)."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise DurableConfigError(f"step.sleep_until({step_id!r}) needs an aware datetime, got {when!r}")
        sid, stored = self._begin(step_id, "sleep", "step.sleep_until")
        self._sleep(sid, stored, lambda: _like_clock(when, self._clock()))

    def _sleep(self, sid: str, stored: StoredStep | None, target: Callable[[], datetime]) -> None:
        if stored is not None and stored.status == "completed":
            return
        if stored is not None:
            wake_at: datetime = serialization.loads(stored.output or "{}")["wake_at"]
        else:
            wake_at = target()
        output = serialization.dumps({"wake_at": wake_at}, f"sleep {sid!r}")
        if self._clock() < wake_at:
            raise _Suspend("sleep", step_id=sid, wake_at=wake_at, output=output, exists=stored is not None)
        if stored is not None:
            self._writer.complete_pending(sid, output)
        else:
            self._writer.save_output(sid, "sleep", output, 1, self._clock(), False)
        self._record(sid, "sleep", output)

    # --- events ---------------------------------------------------------------------------

    def wait_for_event(
        self,
        step_id: str,
        name: str | Sequence[str],
        *,
        match: dict[str, Any] | None = None,
        timeout: Duration | None = None,
    ) -> Event | None:
        """Suspend until an event ``name`` whose data matches arrives; ``None`` at the timeout.

        ``name`` may be a list of names: the first matching event with any of them is
        returned (its ``.name`` says which). Events received since the run started count,
        even those sent before the run reached this wait (each event is consumed by at
        most one wait of a run).
        """
        where = f"step.wait_for_event({step_id!r})"
        names = validate_event_names(name, where)
        match = validate_match(match, where)
        if timeout is None:
            raise DurableConfigError(f"{where}: timeout is required (how long to wait at most)")
        seconds = to_seconds(timeout, f"{where} timeout")
        serialization.dumps(match, f"{where} match")
        sid, stored = self._begin(step_id, "wait", where)
        if stored is not None and stored.status == "completed":
            state = serialization.loads(stored.output or "{}")
            return None if state.get("event") is None else Event.from_json(state["event"])
        if stored is not None:
            state = serialization.loads(stored.output or "{}")
        else:
            # One name keeps the original format; several are listed under "names".
            wanted: dict[str, Any] = {"name": names[0]} if len(names) == 1 else {"names": names}
            state = {**wanted, "match": match, "timeout_at": self._clock() + timedelta(seconds=seconds)}
        waited = wait_names(state)
        found = self._writer.find_event(waited, state.get("match"), self._used_event_ids())
        if found is None and self._clock() < state["timeout_at"]:
            output = serialization.dumps({**state, "event": None}, where)
            marker = waited[0] if len(waited) == 1 else ANY_OF
            raise _Suspend(
                "wait", step_id=sid, output=output, wake_at=state["timeout_at"], event=marker, exists=stored is not None
            )
        output = serialization.dumps({**state, "event": found}, where)
        if stored is not None:
            self._writer.complete_pending(sid, output)
        else:
            self._writer.save_output(sid, "wait", output, 1, self._clock(), False)
        self._record(sid, "wait", output)
        return None if found is None else Event.from_json(found)

    def _used_event_ids(self) -> set[str]:
        used = set()
        for stored in self._checkpoints.values():
            if stored.kind == "wait" and stored.status == "completed" and stored.output:
                event = serialization.loads(stored.output).get("event")
                if event:
                    used.add(consumption_key(event))
        return used

    def send_event(self, step_id: str, name: str, data: dict[str, Any]) -> Event:
        """Send an event exactly once for this run (its id is the step's idempotency key)."""
        where = f"step.send_event({step_id!r})"
        validate_event_name(name, where)
        if not isinstance(data, dict):
            raise DurableConfigError(f"{where}: data must be a dict, got {type(data).__name__}")
        serialization.dumps_value(data, f"{where} data")
        sid, stored = self._begin(step_id, "send_event", where)
        if stored is not None and stored.status == "completed":
            return Event.from_json(serialization.loads(stored.output or "{}"))
        event = self._writer.send_event(name, data, f"{self._run_id}:{sid}")
        output = serialization.dumps(event, where)
        self._writer.save_output(sid, "send_event", output, 1, self._clock(), stored is not None)
        self._record(sid, "send_event", output)
        return Event.from_json(event)

    # --- child runs -----------------------------------------------------------------------

    def invoke(self, step_id: str, signature: Any, *, timeout: Duration | None = None) -> Any:
        """Run another task (durable or plain Celery) as a child; return its result.

        The run suspends until the child finishes. Raises ``ChildRunFailed`` if it failed.
        """
        return self._children(step_id, "invoke", [signature], timeout)[0]

    def gather(self, step_id: str, signatures: Sequence[Any], *, timeout: Duration | None = None) -> list[Any]:
        """Run tasks in parallel as children; return their results in order (fan-out/fan-in)."""
        if isinstance(signatures, str | bytes | dict) or not isinstance(signatures, Sequence) or not signatures:
            raise DurableConfigError(f"step.gather({step_id!r}) needs a non-empty list of signatures")
        return self._children(step_id, "gather", list(signatures), timeout)

    def chain(self, step_id: str, signatures: Any, *, timeout: Duration | None = None) -> Any:
        """Run the links of a Celery ``chain`` (or a list of signatures) one after another.

        Each link is a child run (``step.invoke``, step id ``"<step_id>.<n>"``) that gets the
        previous link's result as its first argument, unless it is immutable (``.si()``), as
        in Celery. Returns the last link's result; a finished link is not run again.
        """
        where = f"step.chain({step_id!r})"
        result: Any = None
        for index, link in enumerate(_chain_links(signatures, where), start=1):
            if index > 1 and not link.get("immutable"):
                link = {**link, "args": [result, *(link.get("args") or ())]}
            result = self.invoke(f"{step_id}.{index}", link, timeout=timeout)
        return result

    def _children(self, step_id: str, kind: str, signatures: list[Any], timeout: Duration | None) -> list[Any]:
        where = f"step.{kind}({step_id!r})"
        seconds = None if timeout is None else to_seconds(timeout, f"{where} timeout")
        specs = [_child_spec(sig, where) for sig in signatures]
        sid, stored = self._begin(step_id, kind, where)
        if stored is not None and stored.status == "completed":
            return _child_outcome(serialization.loads(stored.output or "{}"))
        if stored is None:
            timeout_at = None if seconds is None else self._clock() + timedelta(seconds=seconds)
            output = serialization.dumps({"timeout_at": timeout_at, "children": len(specs)}, where)
            raise _Suspend("children", step_id=sid, kind=kind, specs=specs, wake_at=timeout_at, output=output)
        state = serialization.loads(stored.output or "{}")
        children = self._writer.children(sid)
        unfinished = [child for child in children if child["status"] not in FINISHED]
        if unfinished:
            timeout_at = state.get("timeout_at")
            if timeout_at is None or self._clock() < timeout_at:
                raise _Suspend("children-pending", step_id=sid, wake_at=timeout_at, children=len(unfinished))
            outcome: dict[str, Any] = {
                "failed": {"run_id": unfinished[0]["id"], "type": "Timeout", "message": f"not finished by {timeout_at}"}
            }
        else:
            failed = next((child for child in children if child["status"] != "completed"), None)
            if failed is None:
                outcome = {"results": [child["result"] for child in children]}
            else:
                error = failed["error"] or {
                    "type": failed["status"],
                    "message": f"the child run was {failed['status']}",
                }
                outcome = {"failed": {"run_id": failed["id"], "type": error["type"], "message": error["message"]}}
        output = serialization.dumps(outcome, where)
        self._writer.complete_pending(sid, output)
        self._record(sid, kind, output)
        return _child_outcome(outcome)


def _child_outcome(outcome: dict[str, Any]) -> list[Any]:
    if "failed" in outcome:
        failed = outcome["failed"]
        raise ChildRunFailed(failed["run_id"], failed["type"], failed["message"])
    results: list[Any] = outcome["results"]
    return results


def _chain_links(value: Any, where: str) -> list[dict[str, Any]]:
    """The signatures of a Celery ``chain`` (a ``celery.chain`` signature) or of a list."""
    if isinstance(value, dict) and value.get("task") == "celery.chain":
        value = (value.get("kwargs") or {}).get("tasks")
    if isinstance(value, str | bytes | dict) or not isinstance(value, Sequence) or not value:
        raise DurableConfigError(f"{where} needs a Celery chain or a non-empty list of signatures, got {value!r}")
    for index, link in enumerate(value, start=1):
        name = link.get("task") if isinstance(link, dict) else None
        if isinstance(name, str) and name.startswith("celery."):
            raise DurableConfigError(f"{where}: link {index} is a {name}; use step.gather for a group")
    return list(value)


def _child_spec(signature: Any, where: str) -> dict[str, Any]:
    """A Celery signature (a dict) as the JSON spec of a child run."""
    if not isinstance(signature, dict) or not isinstance(signature.get("task"), str):
        raise DurableConfigError(f"{where}: children are Celery signatures (task.s(...)), got {signature!r}")
    spec = {
        "task": signature["task"],
        "args": list(signature.get("args") or ()),
        "kwargs": dict(signature.get("kwargs") or {}),
        "options": {k: v for k, v in dict(signature.get("options") or {}).items() if k not in ("task_id",)},
    }
    serialization.dumps(spec, f"{where} child {signature['task']}")
    return spec


def _like_clock(when: datetime, now: datetime) -> datetime:
    """``when`` in the clock's convention (aware UTC, or naive local without USE_TZ)."""
    if now.tzinfo is None:
        return when.astimezone().replace(tzinfo=None)
    return when.astimezone(UTC)
