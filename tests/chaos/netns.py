"""A worker host of its own: a network namespace joined to this machine by a veth pair.

The services listen on 127.0.0.1 only, so socat forwarders in the root namespace carry the
namespace's connections from the host end of the veth to 127.0.0.1 (PostgreSQL, Redis,
RabbitMQ). Taking the host end down cuts the worker off from the database and the broker
at once; its TCP connections survive a short cut (the kernel retransmits) and go on when
the link comes back, so a stale execution's late writes really reach the database.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess

from .procs import PORTS, port_open, wait_for


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Namespace:
    """``ip netns`` + veth + socat forwarders; :meth:`close` removes all of it."""

    def __init__(self, tag: str) -> None:
        suffix = f"{os.getpid() % 100000:05d}{random.randrange(16**3):03x}"
        self.name = f"chaos-{tag}-{suffix}"
        self.host_if = f"vc{suffix}a"  # interface names: at most 15 characters
        self.peer_if = f"vc{suffix}b"
        used = _ip("-4", "addr", "show").stdout
        octet = next(o for o in random.sample(range(16, 250), 234) if f"10.213.{o}." not in used)
        self.host_ip = f"10.213.{octet}.1"
        self.peer_ip = f"10.213.{octet}.2"
        self.forwarders: list[subprocess.Popen] = []
        self.created = False
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        self.created = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _ip("link", "set", self.peer_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        inside = ["netns", "exec", self.name, "ip"]
        _ip(*inside, "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if)
        _ip(*inside, "link", "set", self.peer_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        for port in PORTS.values():
            self.forwarders.append(
                subprocess.Popen(
                    [
                        "socat",
                        f"TCP-LISTEN:{port},bind={self.host_ip},fork,reuseaddr",
                        f"TCP:127.0.0.1:{port}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for port in PORTS.values():
            wait_for(lambda port=port: port_open(port, self.host_ip), 10, f"socat on {self.host_ip}:{port}")

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def url(self, url: str) -> str:
        """A service URL as seen from inside the namespace."""
        return url.replace("127.0.0.1", self.host_ip)

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        """Kill and reap the forwarders, delete the veth pair and the namespace."""
        for forwarder in self.forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(forwarder.pid, signal.SIGKILL)  # socat and its forked connections
            forwarder.wait(timeout=30)
        self.forwarders = []
        _ip("link", "del", self.host_if, check=False)  # deletes the peer end too
        if self.created:
            _ip("netns", "del", self.name, check=False)
            self.created = False
