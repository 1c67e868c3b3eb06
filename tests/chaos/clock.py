"""Clock jumps of the waker: the services thread of one worker reads its clock offset from a file.

``tests/settings.py`` installs this clock when ``DURABLE_TEST_SERVICES_CLOCK`` names the
file. Only the worker's services thread (waker, sweeper, reaper) sees the offset; step
bodies, claims and heartbeats in the same worker keep the real clock, as when the clock of a
host running ``durable_services`` jumps. The harness jumps it by writing a new offset.
"""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

SERVICES_THREAD = "celery-durable-services"  # the name of integration.services.ServiceThread


def offset_seconds(path: Path) -> float:
    try:
        return float(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def install_services_clock(path: str) -> None:
    from celery_durable import clock

    file = Path(path)

    def now() -> datetime:
        real = datetime.now(UTC)
        if threading.current_thread().name != SERVICES_THREAD:
            return real
        return real + timedelta(seconds=offset_seconds(file))

    clock.set_clock(now)


def jump(path: Path, seconds: float) -> None:
    """Set the services clock of the worker reading ``path`` to real time + ``seconds``."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(repr(float(seconds)))
    tmp.replace(path)  # atomic: the worker never reads a half-written offset
