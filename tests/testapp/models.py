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
