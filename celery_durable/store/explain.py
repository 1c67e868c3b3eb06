"""Why is this run waiting? A pure read of the run row and the flow-control state that holds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count, Min

from .. import clock, serialization
from ..models import BatchItem, FlowState, Run, Slot, Step
from ..runtime.events import ANY_OF, wait_names
from ..states import FINISHED, HOLDING_SLOTS, RunStatus, StepStatus
from . import fair
from .batches import get_item
from .pausing import pause_of
from .runs import get
from .slots import EFFECTIVE_LIMIT

GATES = (
    "finished",  # nothing holds it: the run ended (or flow control skipped it)
    "singleton",  # skipped at .delay(): a singleton's holder was unfinished
    "running",  # nothing holds it: an execution holds its lease
    "paused",  # a pause of its task or key
    "concurrency",  # the backlog of a full concurrency key
    "debounce",  # a debounce deadline
    "throttle",  # a throttle's next slot
    "retry",  # a step retry's delay
    "scheduled",  # a countdown or eta
    "broker",  # its message is in the broker queue
    "sleep",  # step.sleep
    "event",  # step.wait_for_event
    "children",  # child runs
    "batch",  # a batched call whose batch is still forming (explained by the call's id)
)


@dataclass(frozen=True)
class Explanation:
    """The gate that holds a run, in words and as data.

    ``gate`` is one of :data:`GATES`; ``since`` is when the run came to this gate (when known),
    ``estimated_start`` when it should start or resume (``None`` when no time can be
    computed: a backlog, an event, children, a pause); ``holders`` the ids of the runs that
    hold it (a key's slot holders, the child runs). ``data`` has the gate's particulars
    (the key and its limit, the event names and match, the pause's author...).
    """

    run_id: str
    status: str
    gate: str
    detail: str
    since: datetime | None = None
    estimated_start: datetime | None = None
    holders: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"run {self.run_id} ({self.status}): {self.detail}"
        if self.estimated_start is not None:
            text += f"; estimated start {self.estimated_start.isoformat()}"
        return text

    def to_json(self) -> dict[str, Any]:
        """The explanation as JSON-ready values (datetimes as ISO 8601 text)."""

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "run_id": self.run_id,
            "status": self.status,
            "gate": self.gate,
            "detail": self.detail,
            "since": iso(self.since),
            "estimated_start": iso(self.estimated_start),
            "holders": list(self.holders),
            "data": self.data,
        }


Gate = Callable[..., Explanation]


def explain(run_id: str, using: str = "default", run: Run | None = None) -> Explanation:
    """Why ``run_id`` is not executing now; ``RunNotFound`` for an unknown id. Writes nothing.

    ``run``: the run's row when the caller loaded it already (the admin's run page).
    """
    if run is None:
        forming = _forming_call(run_id, using)
        if forming is not None:
            return forming
        run = get(run_id, using)
    status = RunStatus(run.status)

    def gate(name: str, detail: str, **kwargs: Any) -> Explanation:
        return Explanation(run.id, status.value, name, detail, **kwargs)

    if status == RunStatus.SKIPPED:
        return _skipped(run, gate, using)
    if status in FINISHED:
        return gate("finished", f"not waiting: it {status.value} at {_at(run.finished_at)}", since=run.finished_at)
    if status == RunStatus.RUNNING:
        return gate(
            "running",
            f"not waiting: executing on {run.lease_owner or 'a worker'} (lease until {_at(run.lease_expires_at)})",
            since=run.started_at,
        )
    paused = pause_of(run.task_name, [run.slot_key1, run.slot_key2], using)
    if paused is not None:
        scope = f"task {run.task_name}" if paused.key is None else f"key {paused.key} of task {run.task_name}"
        who = f" by {paused.by}" if paused.by else ""
        return gate(
            "paused",
            f"paused: {scope} is paused since {_at(paused.created_at)}{who}; it starts after resume",
            since=paused.created_at,
            data={"task_name": paused.task_name, "key": paused.key, "by": paused.by},
        )
    if status == RunStatus.PENDING:
        return _backlog(run, gate, using)
    if status == RunStatus.QUEUED:
        return _queued(run, gate, using)
    if status == RunStatus.SLEEPING:
        return gate("sleep", f"sleeping until {_at(run.wake_at)}", estimated_start=run.wake_at, data=_pending_step(run))
    if status == RunStatus.WAITING and run.waiting_for:
        return _event(run, gate, using)
    if status == RunStatus.WAITING:
        children = list(
            Run.objects.using(using)
            .filter(parent_id=run.id)
            .exclude(status__in=FINISHED)
            .order_by("child_index", "created_at")
            .values_list("id", flat=True)
        )
        timeout = f" (timeout at {_at(run.wake_at)})" if run.wake_at else ""
        return gate(
            "children",
            f"waiting for {len(children)} child run(s): {', '.join(children) or 'none left'}{timeout}",
            holders=children,
            data={"timeout_at": run.wake_at.isoformat() if run.wake_at else None},
        )
    # PAUSED with its pause gone (a resume is queueing it now).
    return gate("paused", "paused: its pause was lifted; it is being queued again")


def _at(when: datetime | None) -> str:
    return "?" if when is None else when.isoformat(timespec="seconds")


def _pending_step(run: Run) -> dict[str, Any]:
    step = Step.objects.filter(run_id=run.id, status=StepStatus.PENDING).order_by("-started_at").first()
    return {} if step is None else {"step_id": step.step_id}


def _backlog(run: Run, gate: Gate, using: str) -> Explanation:
    keys = [key for key in (run.slot_key1, run.slot_key2) if key]
    runs = Run.objects.using(using)
    holders: list[str] = []
    words: list[str] = []
    data: dict[str, Any] = {"keys": []}
    for key in keys:
        slot = (
            Slot.objects.using(using)
            .filter(key=key)
            .annotate(limit_now=EFFECTIVE_LIMIT)
            .values_list("limit_now", "in_use")
        ).first()
        limit, in_use = slot if slot is not None else (None, 0)
        held = list(
            runs.filter(holds_slots=True, status__in=HOLDING_SLOTS)
            .filter(slot_key1=key)
            .union(runs.filter(holds_slots=True, status__in=HOLDING_SLOTS, slot_key2=key))
            .values_list("id", flat=True)
        )
        if key == run.fair_slot:  # a fair key: the runs before this one in turn
            ahead = runs.filter(fair.ahead_of(run), status=RunStatus.PENDING).count()
        else:
            ahead = sum(
                runs.filter(status=RunStatus.PENDING, backlog_at__lt=run.backlog_at, **{field: key}).count()
                for field in ("slot_key1", "slot_key2")
            )
        holders += [h for h in held if h not in holders]
        words.append(f"key {key} is full ({in_use}/{limit} slots, held by {', '.join(held) or 'none'}), {ahead} ahead")
        data["keys"].append({"key": key, "limit": limit, "in_use": in_use, "holders": held, "ahead": ahead})
    return gate("concurrency", "in the backlog: " + "; ".join(words), since=run.created_at, holders=holders, data=data)


def _flow_states(task_name: str, option: str, using: str) -> Any:
    return FlowState.objects.using(using).filter(name__startswith=f"{option}:{task_name}:")


def _queued(run: Run, gate: Gate, using: str) -> Explanation:
    now = clock.now()
    due = run.wake_at is None or run.wake_at <= now
    retried = None
    if run.executions > 0:
        failed = Step.objects.using(using).filter(run_id=run.id, status=StepStatus.FAILED)
        retried = failed.order_by("-finished_at").first()
    if retried is not None:
        when = f"at {_at(run.wake_at)}" if not due else "as soon as a worker takes its message"
        return gate(
            "retry",
            f"step {retried.step_id!r} failed (attempt {retried.attempts}); it retries {when}",
            since=retried.finished_at,
            estimated_start=None if due else run.wake_at,
            data={"step_id": retried.step_id, "attempts": retried.attempts},
        )
    if due:
        return gate(
            "broker",
            f"in the broker queue since {_at(run.published_at)}, waiting for a worker",
            since=run.published_at,
        )
    debounce = _flow_states(run.task_name, "debounce", using).filter(run_id=run.id).first()
    if debounce is not None:
        return gate(
            "debounce",
            f"debounced: starts at {_at(run.wake_at)} unless another call moves the deadline",
            since=debounce.started_at,
            estimated_start=run.wake_at,
            data={"key": debounce.name},
        )
    # The task's throttle states (its key is not stored on the run: named only when there is one).
    throttles = list(_flow_states(run.task_name, "throttle", using).values_list("name", flat=True)[:2])
    if throttles and run.executions == 0:
        key = throttles[0] if len(throttles) == 1 else None
        return gate(
            "throttle",
            f"throttled{f' ({key})' if key else ''}: its slot is at {_at(run.wake_at)}",
            since=run.created_at,
            estimated_start=run.wake_at,
            data={"key": key, "next_slot": run.wake_at.isoformat() if run.wake_at else None},
        )
    return gate(
        "scheduled", f"scheduled: starts at {_at(run.wake_at)}", since=run.created_at, estimated_start=run.wake_at
    )


def _event(run: Run, gate: Gate, using: str) -> Explanation:
    step = (
        Step.objects.using(using)
        .filter(run_id=run.id, kind="wait", status=StepStatus.PENDING)
        .order_by("-started_at")
        .first()
    )
    state = serialization.loads(step.output or "{}") if step is not None else {}
    names = wait_names(state)
    if not names and run.waiting_for != ANY_OF:
        names = [str(run.waiting_for)]
    match = state.get("match")
    text = " or ".join(repr(n) for n in names) or repr(run.waiting_for)
    detail = f"waiting for event {text}"
    if match:
        detail += f" matching {serialization.dumps(match, 'match')}"
    if run.wake_at is not None:
        detail += f" (timeout at {_at(run.wake_at)})"
    return gate(
        "event",
        detail,
        since=step.started_at if step is not None else None,
        data={
            "events": names,
            "match": match,
            "step_id": step.step_id if step is not None else None,
            "timeout_at": run.wake_at.isoformat() if run.wake_at else None,
        },
    )


def _skipped(run: Run, gate: Gate, using: str) -> Explanation:
    """A call flow control refused at ``.delay()``: which rule, and a singleton's holder."""
    reason = str((run.error_value or {}).get("message", ""))
    holders: list[str] = []
    if reason.startswith("singleton:"):
        holder = reason.split("run ", 1)[1].split(" ", 1)[0] if "run " in reason else ""
        holders = [holder] if holder else []
        return gate("singleton", f"never ran: {reason}", since=run.created_at, holders=holders)
    return gate("finished", f"never ran: skipped by flow control ({reason})", since=run.created_at)


def _forming_call(call_id: str, using: str) -> Explanation | None:
    """A batched call's id: the explanation of its batch run, or of the batch that forms."""
    item = get_item(call_id, using)
    if item is None:
        return None
    if item.run_id is not None:
        return explain(item.run_id, using)
    forming = BatchItem.objects.using(using).filter(run__isnull=True, batch_key=item.batch_key)
    summary = forming.aggregate(calls=Count("id"), oldest=Min("due_at"))
    calls, oldest = summary["calls"], summary["oldest"]
    detail = (
        f"a forming batch of {item.task_name}: {calls} of {item.max_size} calls wait; the batch runs when "
        f"{item.max_size} have arrived or at {_at(oldest)}, whichever comes first"
    )
    return Explanation(
        call_id,
        "forming",
        "batch",
        detail,
        since=item.created_at,
        estimated_start=oldest,
        data={"batch_key": item.batch_key, "waiting": calls, "max_size": item.max_size},
    )
