from django.db import models


class BodyRun(models.Model):
    """One row per execution of a step body: the ground truth for 'ran exactly once'."""

    run_id = models.CharField(max_length=255)
    step = models.CharField(max_length=255)
    pid = models.IntegerField(default=0)


class Ledger(models.Model):
    """Written by atomic steps."""

    run_id = models.CharField(max_length=255)
    amount = models.IntegerField()


class Interval(models.Model):
    """When a step body executed, per concurrency key: checked against the key's limit."""

    run_id = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    started = models.DateTimeField()
    ended = models.DateTimeField(null=True)  # null: the attempt was killed inside the body
    pid = models.IntegerField(default=0)


# --- the chaos suite (tests/chaos): ground truth written by step bodies and the harness ---


class ChaosCounter(models.Model):
    """How many times the body of a step of a run started (one row per (run, step))."""

    run_id = models.CharField(max_length=255)
    step = models.CharField(max_length=255)
    count = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run_id", "step"], name="chaos_counter_unique")]


class ChaosAttempt(models.Model):
    """One execution attempt of a step body: who ran it and when (database clock).

    ``n`` is the counter value after this attempt's increment; the body returns it, so the
    checkpointed output names the attempt that won. ``key`` is set for per-key concurrency
    bodies; ``ended`` stays null if the attempt was killed inside the body.
    """

    run_id = models.CharField(max_length=255)
    step = models.CharField(max_length=255)
    n = models.IntegerField()
    pid = models.IntegerField()
    atomic = models.BooleanField(default=False)
    key = models.CharField(max_length=255, null=True)
    started = models.DateTimeField()
    ended = models.DateTimeField(null=True)


class ChaosClaim(models.Model):
    """An execution that claimed a run (from the run_started/run_resumed signals)."""

    run_id = models.CharField(max_length=255)
    execution = models.IntegerField()
    pid = models.IntegerField()
    at = models.DateTimeField()


class ChaosFault(models.Model):
    """A fault the harness injected: which processes it hit, from when until when."""

    kind = models.CharField(max_length=64)
    at = models.DateTimeField()
    until = models.DateTimeField(null=True)
    pids = models.TextField(default="[]", help_text='JSON list of pids hit, or "*" for every process')
    detail = models.TextField(default="{}", help_text="JSON details (runs and their lease expiry for kills)")
