"""The runs this process executes now, and the name its leases carry."""

from __future__ import annotations

import os
import socket
import uuid

_owner: tuple[int, str] | None = None


def lease_owner() -> str:
    """This process's lease-owner name: host, pid and a random suffix (new after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


class ActiveRuns:
    """The runs this process is executing now (for the heartbeat), and those asked to stop."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.cancelled: set[str] = set()


active = ActiveRuns()
