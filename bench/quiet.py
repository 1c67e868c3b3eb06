"""Waiting for other engineers' benchmarks to end before a measurement, and recording the load.

The machine is shared: before each measurement, ``wait()`` polls ``pgrep -af "bench\\.|bench/"``
every 30 s (up to 20 min, then measures anyway and says so), ignoring this process, its
ancestors and its own process group. One invocation waits at most 40 min in all: a
benchmark that outlasts that (some run for hours) does not hold every later measurement
back by another 20 min; the report names what was running.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

PATTERN = r"bench\.|bench/"
TOTAL_LIMIT = 2400.0  # seconds of waiting per invocation, over all measurements
_waited_total = 0.0


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def others() -> list[str]:
    """Other benchmark processes running now (pid and command line)."""
    out = subprocess.run(["pgrep", "-af", PATTERN], capture_output=True, text=True).stdout
    mine, group = _ancestors(), os.getpgrp()
    found = []
    for line in out.splitlines():
        pid = int(line.split()[0])
        try:
            if pid in mine or os.getpgid(pid) == group:
                continue
        except ProcessLookupError:
            continue
        found.append(line[:200])
    return found


def uptime() -> str:
    """``uptime``'s line (time, up, users, load averages)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def wait(log, limit: float = 1200, poll: float = 30) -> dict:
    """Wait until no other benchmark runs (at most ``limit`` s); what happened, for the report."""
    global _waited_total
    limit = max(0.0, min(limit, TOTAL_LIMIT - _waited_total))
    started = time.monotonic()
    found = others()
    if found:
        log(f"other benchmarks running; waiting (poll {poll:.0f} s, up to {limit:.0f} s):\n  " + "\n  ".join(found[:4]))
    while found and time.monotonic() - started < limit:
        time.sleep(poll)
        found = others()
    _waited_total += time.monotonic() - started
    waited = round(time.monotonic() - started)
    if found:
        log(f"still running after {waited} s; measuring anyway")
    return {"waited_s": waited, "others_running": found, "uptime": uptime()}
