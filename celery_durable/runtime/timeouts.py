"""A step's time limit: ``StepTimeout`` raised inside the step, as Celery's soft time limit does.

In the main thread of a POSIX process (the prefork and solo pools) an interval timer
(``signal.setitimer`` + ``SIGALRM``) interrupts the step body at its next Python bytecode.
Elsewhere (threads, eventlet, gevent, Windows) no signal can reach the body: the step is
checked when it returns and counts as timed out if it ran too long (its output is discarded).
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

from ..exceptions import StepTimeout


def can_interrupt() -> bool:
    """Whether a timer signal can interrupt a step here (POSIX, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


class StepTimer:
    """Context manager around one attempt of a step body; :meth:`expired` says if it overran."""

    def __init__(self, step_id: str, seconds: float) -> None:
        self.step_id = step_id
        self.seconds = seconds
        self.fired = False
        self._armed = False
        self._started = 0.0
        self._previous_handler: Any = None
        self._previous_timer: tuple[float, float] = (0.0, 0.0)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        self.fired = True
        raise StepTimeout(self.step_id, self.seconds)

    def __enter__(self) -> StepTimer:
        self._started = time.monotonic()
        if can_interrupt():
            try:
                self._previous_handler = signal.signal(signal.SIGALRM, self._alarm)
            except ValueError:  # not the main interpreter's main thread after all
                return self
            self._previous_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self._armed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._armed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous_handler)
        self._armed = False
        delay, interval = self._previous_timer
        if delay > 0:  # someone else's timer was running: give it back what is left of it
            left = delay - (time.monotonic() - self._started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)

    def expired(self) -> bool:
        """Whether the alarm fired or the body ran at least ``seconds``."""
        return self.fired or time.monotonic() - self._started >= self.seconds

    def check(self) -> None:
        """Raise :class:`StepTimeout` if the body overran (the fallback when no signal reached it)."""
        if self.expired():
            raise StepTimeout(self.step_id, self.seconds)
