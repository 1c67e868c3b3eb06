"""What Celery's tracer costs for an execution that ends with ``Ignore`` (a durable suspension).

    .venv/bin/python bench/ignore_cost.py [--calls 2000]

A durable run that sleeps, waits or starts child runs ends its Celery execution with
``celery.exceptions.Ignore`` (no result, no callbacks, no success signal). Celery's tracer
answers ``Ignore`` with two ``billiard.einfo.ExceptionInfo`` objects: each copies every
frame's ``co_positions()`` (Python >= 3.11) and formats the traceback, and the first is the
execution's return value, pickled to the pool's parent process. This times the tracer of a
task that returns ``None`` against one that raises ``Ignore``, with the pickled size of what
each returns. No broker, no database: ``build_tracer`` on a bare app, in this process.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from typing import Any


def per_call(tracer: Any, calls: int) -> tuple[float, int]:
    """Milliseconds per traced call, and the pickled size of its return value."""
    request = {"id": "bench", "delivery_info": {}, "hostname": "bench"}
    for _ in range(50):  # warm up
        tracer("bench", (), {}, request)
    started = time.perf_counter()
    for _ in range(calls):
        returned = tracer("bench", (), {}, request)
    elapsed = 1000 * (time.perf_counter() - started) / calls
    value = returned[0]
    return elapsed, 0 if value is None else len(pickle.dumps(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)

    from celery import Celery
    from celery.app.trace import build_tracer
    from celery.exceptions import Ignore

    app = Celery("bench_ignore", broker="memory://")

    @app.task(name="bench.returns")
    def returns() -> None:
        return None

    @app.task(name="bench.ignores")
    def ignores() -> None:
        raise Ignore()

    out: dict[str, Any] = {"python": sys.version.split()[0], "calls": args.calls}
    for label, task in (("returns", returns), ("ignores", ignores)):
        tracer = build_tracer(task.name, task, eager=False, propagate=False, app=app)
        ms, size = per_call(tracer, args.calls)
        out[label] = {"ms_per_call": round(ms, 3), "pickled_return_bytes": size}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
