"""The chaos seed: one integer every random choice of a chaos session derives from (no Django here).

Set ``DURABLE_CHAOS_SEED`` (the test) or pass ``--seed`` (bench/chaos.py) to replay a
session. Each consumer draws from a stream of its own (``Random(f"{seed}/<name>")``), so
the workload's calls do not shift when a fault draws one number more or less than last time:
the same seed gives the same fault order, workload mix, event and cancel delays, and the
same choice among equal candidates. The workers' timing is not replayed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

ENV = "DURABLE_CHAOS_SEED"


class BadSeed(ValueError):
    """``DURABLE_CHAOS_SEED`` (or ``--seed``) is not a non-negative integer."""


def chaos_seed(value: str | None = None) -> int:
    """The session's seed: ``value`` (default: ``$DURABLE_CHAOS_SEED``), or a new random one."""
    if value is None:
        value = os.environ.get(ENV)
    if value is None or not value.strip():
        return random.SystemRandom().randrange(10**6)
    try:
        seed = int(value.strip())
    except ValueError:
        raise BadSeed(f"the chaos seed ({ENV}, --seed) must be a non-negative integer, got {value!r}") from None
    if seed < 0:
        raise BadSeed(f"the chaos seed ({ENV}, --seed) must be a non-negative integer, got {value!r}")
    return seed


@dataclass(frozen=True)
class Streams:
    """The independent random streams of one session, all from one seed."""

    seed: int
    plan: random.Random  # the order of the short form's faults
    schedule: random.Random  # when runs are called and faults land; the long form's fault kinds
    workload: random.Random  # which runs, their arguments, event and cancel delays, event tokens
    faults: random.Random  # each fault's choice of target (process, session, offset)


def streams(seed: int) -> Streams:
    """The streams of a session with ``seed`` (the same seed, the same streams)."""
    return Streams(seed, *(random.Random(f"{seed}/{name}") for name in ("plan", "schedule", "workload", "faults")))


def banner(seed: int) -> str:
    """The line printed at the start of every chaos session."""
    return f"chaos seed {seed} (replay: {ENV}={seed}, or bench/chaos.py --seed {seed})"
