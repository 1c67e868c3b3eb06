"""The generic cell rate algorithm: rate limits and throttles as one timestamp per key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Cell:
    """``limit`` per ``period`` seconds with ``burst`` back-to-back allowed."""

    limit: int
    period: float
    burst: int = 1

    @property
    def interval(self) -> timedelta:
        """Emission interval: the spacing of starts at the steady rate."""
        return timedelta(seconds=self.period / self.limit)

    @property
    def tolerance(self) -> timedelta:
        """How far ahead of the steady rate a burst may run."""
        return self.interval * (self.burst - 1)


def schedule(cell: Cell, tat: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """Throttle: when a call at ``now`` may start (FIFO, never dropped), and the new TAT."""
    tat = now if tat is None or tat < now else tat
    start = max(now, tat - cell.tolerance)
    return start, max(tat, start) + cell.interval
