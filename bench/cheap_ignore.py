"""Bench experiment, never the library: Celery's tracer without a traceback for ``Ignore``.

``bench.peers --cheap-ignore`` imports this in its Celery workers (``bench/peers/app.py``)
to measure what a durable sleep would cost if Celery's tracer did not build the two
``billiard.einfo.ExceptionInfo`` of an ``Ignore`` (each copies every frame's
``co_positions()`` and formats the traceback; the first is pickled to the pool's parent,
~32 KB). Celery logs an ignored task at INFO without its traceback, so the fix belongs
upstream (docs/benchmarks.md, "Why a durable sleep costs what it costs"). Other exceptions
keep billiard's ``ExceptionInfo`` unchanged.
"""

from __future__ import annotations

import sys
from typing import Any

import billiard.einfo
from celery.exceptions import Ignore

_full_init = billiard.einfo.ExceptionInfo.__init__


def _init(self: Any, exc_info: Any = None, internal: bool = False) -> None:
    exc_type, exception, tb = exc_info or sys.exc_info()
    if not isinstance(exception, Ignore):
        _full_init(self, (exc_type, exception, tb), internal)
        return
    self.type, self.tb, self.traceback, self.internal = exc_type, None, "", internal
    self.exception = billiard.einfo.ExceptionWithTraceback(exception, "")


billiard.einfo.ExceptionInfo.__init__ = _init  # type: ignore[method-assign]
