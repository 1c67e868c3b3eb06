"""Durable tasks used by the integration and e2e tests."""

import os
import signal
import time
from pathlib import Path

from celery import shared_task

from celery_durable import NonRetriableError, RetryAfter, durable_task, step

from .models import BodyRun, Ledger


def counted(name: str, value=None):
    BodyRun.objects.create(run_id=step.run_id, step=name, pid=os.getpid())
    return value


@durable_task(name="t.add")
def add(x, y):
    return step.run("add", lambda: x + y)


@durable_task(name="t.three_steps")
def three_steps(n):
    a = step.run("one", counted, "one", n + 1)
    b = step.run("two", counted, "two", a * 2)
    return step.run("three", counted, "three", b + 3)


@durable_task(name="t.no_steps")
def no_steps(x):
    return {"x": x}


@durable_task(name="t.loop")
def loop(n):
    return [step.run("item", counted, "item", i) for i in range(n)]


@durable_task(name="t.flaky", retries=2, retry_backoff=False, default_retry_delay=0)
def flaky(fail_times):
    def body():
        done = BodyRun.objects.filter(run_id=step.run_id, step="flaky").count()
        counted("flaky")
        if done < fail_times:
            raise ValueError(f"failure {done + 1}")
        return step.attempt

    before = step.run("before", counted, "before", 1)
    return [before, step.run("flaky", body)]


@durable_task(name="t.non_retriable", retries=5)
def non_retriable():
    step.run("ok", counted, "ok", 1)

    def boom():
        counted("boom")
        raise NonRetriableError("card declined")

    return step.run("boom", boom)


@durable_task(name="t.retry_after", retries=1)
def retry_after():
    def body():
        counted("ra")
        if BodyRun.objects.filter(run_id=step.run_id, step="ra").count() == 1:
            raise RetryAfter(0)
        return "ok"

    return step.run("ra", body)


@durable_task(name="t.atomic")
def atomic_task(amount, fail_after_write):
    def write():
        Ledger.objects.create(run_id=step.run_id, amount=amount)
        if fail_after_write and not Ledger.objects.filter(run_id=step.run_id, amount=-1).exists():
            raise NonRetriableError("after the write")
        return amount

    return step.run("write", write, atomic=True)


@durable_task(name="t.bad_output")
def bad_output():
    return step.run("bad", lambda: object())


@durable_task(name="t.big_output")
def big_output(size):
    return step.run("big", lambda: "x" * size)


@durable_task(name="t.outside_error")
def outside_error():
    step.run("fine", counted, "fine", 1)
    raise KeyError("not in a step")


@durable_task(name="t.crash_once")
def crash_once(marker: str, hold: float = 0.0):
    """Kills its own worker process in step two, once (the marker file remembers)."""
    step.run("one", counted, "one", 1)

    def two():
        counted("two")
        if not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return 2

    step.run("two", two)
    return step.run("three", counted, "three", 3)


@durable_task(name="t.slow_step", bind=True)
def slow_step(self, seconds: float):
    def body():
        counted("slow")
        time.sleep(seconds)
        return self.step.run_id

    return step.run("slow", body)


@shared_task(name="t.plain")
def plain(x):
    return x * 2


# Query counts seen inside step calls, filled by t.measured (tests read and reset it).
MEASURED: dict[str, int] = {}


@durable_task(name="t.measured", retries=1, retry_backoff=False, default_retry_delay=0)
def measured():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def observe(label, step_id, value):
        with CaptureQueriesContext(connection) as queries:
            result = step.run(step_id, lambda: value)
        MEASURED[label] = len(queries.captured_queries)
        MEASURED[label + ".sql"] = [q["sql"] for q in queries.captured_queries]
        return result

    observe("one", "one", 1)
    observe("two", "two", 2)

    def third():
        if not BodyRun.objects.filter(run_id=step.run_id, step="third").exists():
            BodyRun.objects.create(run_id=step.run_id, step="third")
            raise ValueError("fail once")
        return 3

    return step.run("three", third)


@durable_task(name="t.direct_fail", retries=0)
def direct_fail():
    return step.run("divide", lambda: 1 / 0)


@durable_task(name="t.connection_killer")
def connection_killer():
    """Its second step kills the worker's own PostgreSQL session once (the database 'goes away')."""
    from django.db import connection, connections

    step.run("before", counted, "before", 1)

    def kill_session():
        if not BodyRun.objects.filter(run_id=step.run_id, step="killed").exists():
            counted("killed")
            pid = connection.cursor().connection.info.backend_pid
            other = connections.create_connection("default")
            try:
                with other.cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            finally:
                other.close()
        return "after"

    return step.run("kill", kill_session)


@durable_task(name="t.slow_step_chain")
def slow_step_chain(hold_seconds: float):
    """Step two holds until the test writes a 'release' row (or hold_seconds pass)."""
    step.run("one", counted, "one", 1)

    def two():
        counted("two")
        deadline = time.monotonic() + hold_seconds
        while time.monotonic() < deadline:
            if BodyRun.objects.filter(run_id=step.run_id, step="release").exists():
                return 2
            time.sleep(0.05)
        return 2

    step.run("two", two)
    step.run("three", counted, "three", 3)
    return "done"


def backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@durable_task(name="t.durable_backend_pid")
def durable_backend_pid():
    return step.run("pid", backend_pid)


@shared_task(name="t.plain_backend_pid")
def plain_backend_pid():
    return backend_pid()


@durable_task(name="t.identity")
def identity(value):
    """Checkpoint and return its argument (deep values cross the broker and come back)."""
    return step.run("identity", lambda: value)


@durable_task(name="t.cyclic_output")
def cyclic_output():
    """A step returning a list that contains itself: the run fails with SerializationError."""

    def build():
        value = [1]
        value.append(value)
        return value

    return step.run("cycle", build)


# --- forks, metadata and progress ---


def _with_progress(name, value):
    step.progress(1, 2, "half way")
    step.progress(2, 2, "done")
    return counted(name, value)


@durable_task(name="t.tagged")
def tagged(order_id, customer="acme"):
    step.set_metadata(order_id=order_id, customer=customer)
    a = step.run("fetch", counted, "fetch", order_id + 1)
    step.set_metadata(stage="fetched")
    b = step.run("charge", _with_progress, "charge", a * 2)
    return step.run("ship", counted, "ship", {"a": a, "b": b, "customer": customer})


@durable_task(name="t.bad_metadata")
def bad_metadata(field, value):
    step.set_metadata(**{field: value})
    return step.run("after", counted, "after", 1)


@durable_task(name="t.fork_flow")
def fork_flow(n):
    a = step.run("one", counted, "one", n)
    step.sleep("nap", 3600)
    c = step.invoke("child", add.s(a, 1))
    return step.run("last", counted, "last", c * 10)
