"""Tables of celery-durable: runs and their step checkpoints.

Rows change state only through :mod:`celery_durable.store` (one conditional UPDATE or
INSERT per transition), never through model signals or ``save()`` of a loaded instance.
The statuses are in :mod:`celery_durable.states`.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from . import serialization
from .states import RunStatus, StepStatus, choices


class Run(models.Model):
    """One durable run: the id is the Celery task id of every publication of the run."""

    id = models.CharField(max_length=255, primary_key=True)
    task_name = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=choices(RunStatus), default=RunStatus.QUEUED)
    args = models.TextField(default="[]", help_text="JSON list of positional arguments")
    kwargs = models.TextField(default="{}", help_text="JSON dict of keyword arguments")
    options = models.TextField(default="{}", help_text="JSON publish options (queue, links, ...)")
    result = models.TextField(null=True, blank=True, help_text="JSON result once completed")
    error = models.TextField(null=True, blank=True, help_text="JSON {type, module, message, traceback}")
    priority = models.SmallIntegerField(default=0)
    # Fencing token: bumped by every claim; checkpoint writes name the generation they hold.
    generation = models.PositiveIntegerField(default=0)
    executions = models.PositiveIntegerField(default=0)
    recoveries = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=255, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Suspension: the event a waiting run waits for; its parent and children.
    waiting_for = models.CharField(max_length=255, null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        db_constraint=False,
        db_index=False,  # the (parent, parent_step) index below serves it
    )
    parent_step = models.CharField(max_length=255, null=True, blank=True)
    child_index = models.PositiveIntegerField(null=True, blank=True)
    children_pending = models.PositiveIntegerField(default=0)
    # False for a plain Celery task recorded as the child of a durable run.
    durable = models.BooleanField(default=True)
    # Cancellation and timeouts.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.TextField(null=True, blank=True)
    start_by = models.DateTimeField(null=True, blank=True)
    finish_by = models.DateTimeField(null=True, blank=True)
    # Concurrency: up to two slot keys, whether the run holds their slots, and its place in
    # the backlog (created_at minus its priority in seconds).
    slot_key1 = models.CharField(max_length=255, null=True, blank=True)
    slot_key2 = models.CharField(max_length=255, null=True, blank=True)
    holds_slots = models.BooleanField(default=False)
    backlog_at = models.DateTimeField(null=True, blank=True)
    # Forks: the run this one was forked from, and the step it re-executes from.
    forked_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forks",
        db_constraint=False,
    )
    forked_at_step = models.CharField(max_length=255, null=True, blank=True)
    # ``step.set_metadata`` fields (searched through RunMetadata) and ``step.progress``.
    # Nullable, with no default: a process still running the previous release can insert runs.
    metadata = models.TextField(null=True, blank=True, help_text="JSON object of metadata fields")
    progress = models.TextField(null=True, blank=True, help_text="JSON progress of the running step")
    # Fairness (``Concurrency(fair_key=...)``): the fair run's slot key (its own column, so the
    # fair indexes serve only fair backlogs), its fair value, its weight (turns per round) and
    # its round (store/fair.py: the backlog is served by round, then value, then backlog_at).
    fair_slot = models.CharField(max_length=255, null=True, blank=True)
    fair_value = models.CharField(max_length=255, null=True, blank=True)
    fair_weight = models.PositiveSmallIntegerField(default=1, db_default=1)
    fair_round = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        indexes = [
            models.Index(fields=["status", "wake_at"], name="durable_run_due"),
            models.Index(fields=["status", "lease_expires_at"], name="durable_run_lease"),
            models.Index(fields=["status", "published_at"], name="durable_run_published"),
            models.Index(fields=["task_name", "created_at"], name="durable_run_task"),
            models.Index(fields=["created_at"], name="durable_run_created"),
            models.Index(fields=["status", "waiting_for"], name="durable_run_waiting"),
            models.Index(fields=["finish_by"], name="durable_run_finish_by"),
            models.Index(fields=["start_by"], name="durable_run_start_by"),
            models.Index(fields=["status", "slot_key1", "backlog_at"], name="durable_run_backlog1"),
            models.Index(fields=["status", "slot_key2", "backlog_at"], name="durable_run_backlog2"),
            models.Index(fields=["holds_slots", "status"], name="durable_run_holds"),
            models.Index(fields=["status", "fair_slot", "fair_value", "backlog_at"], name="durable_run_fair"),
            models.Index(
                fields=["status", "fair_slot", "fair_round", "fair_value", "backlog_at"], name="durable_run_fair_turn"
            ),
            models.Index(fields=["parent", "parent_step"], name="durable_run_parent"),
        ]
        # On PostgreSQL, migration 0017 makes the others partial (each holds only the rows its
        # queries look for), and forked_from's; durable_run_published, _task and _created stay whole.
        permissions = [
            ("cancel_run", "Can cancel durable runs"),
            ("replay_run", "Can replay durable runs"),
            ("fork_run", "Can fork durable runs"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.id}] {self.status}"

    @property
    def args_value(self) -> list[Any]:
        """The decoded positional arguments."""
        value: list[Any] = serialization.loads(self.args)
        return value

    @property
    def kwargs_value(self) -> dict[str, Any]:
        """The decoded keyword arguments."""
        value: dict[str, Any] = serialization.loads(self.kwargs)
        return value

    @property
    def metadata_value(self) -> dict[str, Any]:
        """The decoded metadata fields."""
        value: dict[str, Any] = serialization.loads(self.metadata or "{}")
        return value

    @property
    def progress_value(self) -> dict[str, Any] | None:
        """The last ``step.progress`` of the run, if any."""
        return None if not self.progress else serialization.loads(self.progress)

    @property
    def result_value(self) -> Any:
        """The decoded result (``None`` until the run completed)."""
        return None if self.result is None else serialization.loads(self.result)

    @property
    def error_value(self) -> dict[str, Any] | None:
        """The decoded error record, if the run failed."""
        return None if self.error is None else serialization.loads(self.error)


class Step(models.Model):
    """A step checkpoint: one row per step id per run, written once when the step completes."""

    # No index of its own: the unique (run, step_id) constraint serves lookups by run.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    step_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, default="run")
    status = models.CharField(max_length=16, choices=choices(StepStatus))
    output = models.TextField(null=True, blank=True, help_text="JSON output of a completed step")
    error = models.TextField(null=True, blank=True, help_text="JSON error of the last failed attempt")
    attempts = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step_id"], name="durable_step_unique")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.step_id} {self.status}"

    @property
    def output_value(self) -> Any:
        """The decoded output."""
        return None if self.output is None else serialization.loads(self.output)


class RunMetadata(models.Model):
    """One metadata field of a run, as text: the index of ``field:value`` searches."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metadata_fields", db_index=False)
    field = models.CharField(max_length=64)
    value = models.CharField(max_length=200)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "field"], name="durable_meta_unique")]
        indexes = [models.Index(fields=["field", "value"], name="durable_meta_value")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.field}={self.value}"


class Event(models.Model):
    """An event sent with ``send_event``: it starts ``on_event`` tasks and resumes waiting runs."""

    name = models.CharField(max_length=255)
    data = models.TextField(default="{}", help_text="JSON object")
    # The id it was sent with (kept for ever) and, while the idempotency window lasts, the same
    # id in the unique ``dedup_key``: a reuse after the window clears the old row's key only.
    event_id = models.CharField(max_length=255, null=True, blank=True)
    dedup_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    received_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["name", "received_at"], name="durable_event_name")]
        permissions = [("send_event", "Can send events from the admin")]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"

    @property
    def data_value(self) -> dict[str, Any]:
        """The decoded event data."""
        value: dict[str, Any] = serialization.loads(self.data)
        return value


class FlowState(models.Model):
    """Flow-control state per key.

    The run holding an idempotency key, singleton or debounce, or the theoretical arrival
    time of a rate limit or throttle.
    """

    name = models.CharField(max_length=255, unique=True)
    run_id = models.CharField(max_length=255, null=True, blank=True)
    tat = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    admitted = models.TextField(default="[]", help_text="JSON: a rate limit's admissions in its window")

    def __str__(self) -> str:
        return self.name


class Slot(models.Model):
    """A concurrency key: at most ``limit`` of its runs hold a slot (queued or executing)."""

    key = models.CharField(max_length=255, unique=True)
    limit = models.PositiveIntegerField(help_text="The limit the code declares (or a limit callable computed)")
    in_use = models.PositiveIntegerField(default=0)
    override = models.PositiveIntegerField(null=True, blank=True, help_text="Set with set_limit; wins over limit")
    # A fair key (``Concurrency(fair_key=...)``): its backlog is served in round robin order.
    fair = models.BooleanField(default=False, db_default=False)

    class Meta:
        verbose_name = "limit"
        verbose_name_plural = "limits"
        permissions = [("set_limit", "Can override concurrency limits")]

    def __str__(self) -> str:
        return f"{self.key} {self.in_use}/{self.effective_limit}"

    @property
    def effective_limit(self) -> int:
        """The override if one is set, else the declared limit."""
        return self.limit if self.override is None else self.override


class ScheduleState(models.Model):
    """The timetable of one task's ``Schedule``: its next tick, claimed by one conditional UPDATE.

    Created by the services' tick when a task declares a schedule; a task that no longer
    declares one leaves its row, which the services then ignore.
    """

    task_name = models.CharField(max_length=255, unique=True)
    definition = models.CharField(max_length=255, help_text="cron or every, as declared")
    next_tick_at = models.DateTimeField(null=True, blank=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)
    last_run_id = models.CharField(max_length=255, null=True, blank=True)
    # buffer_one: the tick that waits for the unfinished run to finish.
    buffered_tick_at = models.DateTimeField(null=True, blank=True)
    paused = models.BooleanField(default=False)

    class Meta:
        verbose_name = "schedule"
        permissions = [("manage_schedule", "Can pause, resume, trigger and backfill schedules")]

    def __str__(self) -> str:
        return f"{self.task_name} ({self.definition})"


class Pause(models.Model):
    """A pause of a task (``key`` null) or of one concurrency key of it: no run it covers starts."""

    task_name = models.CharField(max_length=255)
    key = models.CharField(max_length=255, null=True, blank=True, help_text="a concurrency key; empty: the whole task")
    created_at = models.DateTimeField()
    by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["task_name", "key"], name="durable_pause_task")]
        permissions = [("pause_task", "Can pause and resume durable tasks")]

    def __str__(self) -> str:
        return self.task_name if self.key is None else f"{self.task_name} [{self.key}]"


class BatchItem(models.Model):
    """One call of a batched task: recorded at ``.delay()``, then assigned to the run of its batch."""

    id = models.CharField(max_length=255, primary_key=True, help_text="the call's id (its AsyncResult id)")
    task_name = models.CharField(max_length=255)
    # The task name and the call's key value (``flow.keys.stored_key``): calls batch per key.
    batch_key = models.CharField(max_length=255)
    arguments = models.TextField(default="{}", help_text="JSON dict of the call's keyword arguments")
    options = models.TextField(
        default="{}", help_text="JSON publish options (queue, ...); the first call's are the run's"
    )
    max_size = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    # When the batch this call starts (as its oldest unassigned call) is due: created_at + wait.
    due_at = models.DateTimeField()
    run = models.ForeignKey(
        Run,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="batch_items",
        db_constraint=False,
        db_index=False,  # the indexes below start with it
    )

    class Meta:
        indexes = [
            models.Index(fields=["run", "batch_key", "created_at"], name="durable_batch_forming"),
            models.Index(fields=["run", "due_at"], name="durable_batch_due"),
        ]

    def __str__(self) -> str:
        return f"{self.batch_key}[{self.id}]"

    @property
    def arguments_value(self) -> dict[str, Any]:
        """The decoded keyword arguments of the call."""
        value: dict[str, Any] = serialization.loads(self.arguments)
        return value
