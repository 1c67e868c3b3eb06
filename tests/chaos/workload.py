"""The chaos workload: calls the chaos tasks, sends the events they wait for, cancels some runs.

Single-threaded: the harness calls :meth:`Workload.step` in its loop. Every call that
needs the database or the broker may fail while a fault is in effect (a restart of
PostgreSQL): the action stays due and is tried again on the next step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from random import Random

from django.db import DatabaseError, connection

import celery_durable
from celery_durable.exceptions import RunStateError
from celery_durable.states import FINISHED as FINISHED_STATUSES
from tests.testapp import chaos_tasks as tasks

logger = logging.getLogger("tests.chaos")
KEYS = ["k0", "k1"]  # few keys: backlogs form behind chaos.limited's limit
# set_limit overrides, on k1 only (k0 keeps the declared limit, which the suite must see reached).
OVERRIDE_KEY, OVERRIDES, OVERRIDE_CHANCE = "k1", [1, 3, None], 0.5
WEIGHTS = {"pipeline": 3, "waiter": 2, "parent": 1, "limited": 4, "cancellable": 2, "batched": 2}


@dataclass
class Workload:
    rng: Random
    queue: str
    called: list[str] = field(default_factory=list)  # run ids .delay() returned
    batched: list[str] = field(default_factory=list)  # call ids of chaos.batched calls (not runs)
    events: list[tuple[float, int, str]] = field(default_factory=list)  # (due, n, token) not yet sent
    cancels: list[tuple[float, str]] = field(default_factory=list)  # (due, run id) not yet cancelled
    sent: dict[int, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    overrides: dict[str, list[int]] = field(default_factory=dict)  # limits set on chaos.limited keys
    n: int = 0

    def _call(self, task, *args) -> str:
        result = task.apply_async(args, queue=self.queue)
        self.called.append(result.id)
        return result.id

    def spawn(self) -> None:
        """Call one run of a randomly chosen kind."""
        # The first call is always a run to cancel: a short run on a loaded machine makes few
        # calls, and a checker that saw no cancellation would have proven nothing about them.
        first = self.n == 0
        kind = "cancellable" if first else self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        self.n += 1
        n = self.n
        soon = time.monotonic()
        if kind == "pipeline":
            self._call(tasks.pipeline, n, self.rng.choice([0.2, 0.5, 1.0, 2.0]))
        elif kind == "waiter":
            self._call(tasks.waiter, n)
            # Some events come before the run reaches its wait (recorded, then found), most after.
            delay, token = self.rng.choice([0.0, 0.5, 1.0, 2.0, 4.0]), f"{self.rng.getrandbits(128):032x}"
            self.events.append((soon + delay, n, token))
        elif kind == "parent":
            self._call(tasks.parent, n)
        elif kind == "limited":
            key = self.rng.choice(KEYS)
            for extra in range(3):  # a burst on one key: a backlog behind its limit
                self._call(tasks.limited, key, n * 10 + extra)
            if key == OVERRIDE_KEY and self.rng.random() < OVERRIDE_CHANCE:
                self._override(self.rng.choice(OVERRIDES))
        elif kind == "batched":
            key = self.rng.choice(KEYS)
            for extra in range(self.rng.randint(1, 4)):  # batches of three form by size or after 0.5 s
                call = tasks.batched.apply_async(kwargs={"key": key, "n": n * 10 + extra}, queue=self.queue)
                self.batched.append(call.id)
        else:
            target = first or self.rng.random() < 0.6
            # A run to cancel sleeps for an hour after its first steps: it must be cancelled to end.
            run_id = self._call(tasks.cancellable, n, 3600 if target else 0.3)
            if target:
                self.cancels.append((soon + self.rng.choice([0.1, 0.5, 1.0, 2.0, 5.0]), run_id))

    def _override(self, limit: int | None) -> None:
        """Lower, raise or remove k1's limit while its runs wait and run (recorded first: a
        database error after the commit must not leave the checker a bound that is too low)."""
        if limit is not None:
            self.overrides.setdefault(OVERRIDE_KEY, []).append(limit)
        celery_durable.set_limit(tasks.limited, OVERRIDE_KEY, limit)

    def step(self, spawn: bool = True) -> None:
        """One round: maybe call a run, send the due events, cancel the due runs."""
        try:
            if spawn:
                self.spawn()
            self._send_due(time.monotonic())
            self._cancel_due(time.monotonic())
        except DatabaseError:
            logger.warning("chaos workload: database unavailable, retrying", exc_info=True)
            connection.close()

    def finish(self) -> None:
        """Send every event and cancel every run still due (the drain phase)."""
        self._send_due(float("inf"))
        self._cancel_due(float("inf"))

    def _send_due(self, until: float) -> None:
        while self.events and min(self.events)[0] <= until:
            item = min(self.events)
            _due, n, token = item
            celery_durable.send_event(tasks.EVENT, {"n": n, "token": token}, id=f"chaos-go-{n}")
            self.sent[n] = token
            self.events.remove(item)

    def _cancel_due(self, until: float) -> None:
        for item in sorted(c for c in self.cancels if c[0] <= until):
            try:
                celery_durable.cancel(item[1], "chaos")
                self.cancelled.append(item[1])
            except RunStateError:
                if celery_durable.get_run(item[1]).status not in FINISHED_STATUSES:
                    continue  # changing under us: try again next round
            self.cancels.remove(item)

    @property
    def outstanding(self) -> int:
        return len(self.events) + len(self.cancels)
