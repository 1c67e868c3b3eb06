"""Tools of the fence and race tests: database snapshots, takeovers, and statement hooks.

A race is made deterministic by running the competing action at an exact point of the
code under test: just before a given SQL statement executes on this thread's connection
(:func:`before_statement`, Django's ``execute_wrapper``; no source change). The competing
action commits from a second connection (:func:`elsewhere`) where the database lets it
commit while the first transaction is open; SQLite takes its write lock at ``BEGIN
IMMEDIATE``, so there a concurrent writer cannot commit inside an open transaction, and
the tests run the action on the same connection instead (:func:`concurrently`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, connections

from celery_durable.models import FlowState, Run, Slot, Step
from celery_durable.store import claims


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row the library writes (runs, steps, slots, flow state), in a stable order."""
    return {
        "runs": list(Run.objects.order_by("id").values()),
        "steps": list(Step.objects.order_by("run_id", "step_id").values()),
        "slots": list(Slot.objects.order_by("key").values()),
        "flow": list(FlowState.objects.order_by("name").values()),
    }


def elsewhere(action: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run ``action`` in another thread, on its own database connection (committed, closed)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(action())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name="competing-connection")
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the competing connection hung (waiting for a lock this test holds?)"
    if errors:
        raise errors[0]
    return result[0] if result else None


def concurrently(action: Callable[[], Any]) -> Any:
    """``action`` committed by another connection; on SQLite, on this one (see the module doc)."""
    if connection.vendor == "sqlite":
        return action()
    return elsewhere(action)


@contextmanager
def before_statement(pattern: str, action: Callable[[], Any], times: int = 1) -> Iterator[list[str]]:
    """Run ``action()`` just before the first ``times`` statements whose SQL matches ``pattern``.

    Only statements of this thread's connection are seen; the yielded list receives the SQL
    of each statement the action ran before (a test asserts the hook fired).
    """
    regex = re.compile(pattern, re.IGNORECASE | re.DOTALL)
    fired: list[str] = []
    busy: list[bool] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if len(fired) < times and not busy and regex.search(sql):
            busy.append(True)
            fired.append(sql)
            try:
                action()
            finally:
                busy.pop()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield fired


def table(model: Any) -> str:
    """The quoted table name of ``model`` as it appears in this connection's SQL."""
    return str(connection.ops.quote_name(model._meta.db_table))


def take_over(run_id: str, owner: str = "worker-b") -> int:
    """Another worker claims ``run_id`` (its lease has expired); returns the new generation."""
    claim = claims.claim(run_id, owner, 30)
    assert claim is not None, f"run {run_id} could not be claimed"
    return claim.generation


def update_of(model: Any, *columns: str) -> str:
    """A pattern matching ``UPDATE <model's table> SET <columns[0]> = ..., <columns[1]> = ...``.

    Also as the writable CTE that starts a statement (``WITH s AS (UPDATE …``: PostgreSQL's
    one-statement suspension).
    """
    quoted = r"[`\"]?"
    sets = r"\s*=\s*[^,]*,\s*".join(f"{quoted}{column}{quoted}" for column in columns)
    return rf"^\s*(WITH\s+\w+\s+AS\s+\(\s*)?UPDATE\s+{quoted}{model._meta.db_table}{quoted}\s+SET\s+{sets}\s*="


def in_parallel(action: Callable[[Any], Any], arguments: list[Any], timeout: float = 120.0) -> list[Any]:
    """``action(argument)`` for each argument, in threads released together, each on its own connection.

    Returns the results in the order of ``arguments``; the first error is re-raised.
    """
    barrier = threading.Barrier(len(arguments))
    results: list[Any] = [None] * len(arguments)
    errors: list[BaseException] = []

    def target(index: int, argument: Any) -> None:
        try:
            connection.ensure_connection()  # connected before the start: the racers start together
            barrier.wait(timeout)
            results[index] = action(argument)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i, a), name=f"racer-{i}") for i, a in enumerate(arguments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    if errors:
        raise errors[0]
    return results
