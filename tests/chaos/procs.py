"""Worker processes and the machine's services, for the chaos suite and bench/chaos.py (no pytest).

Services are restarted with the commands this machine starts them with (see .ci/run). A
restart helper always starts its service again, even when the code between stop and start
fails; :func:`ensure_services_up` is a last-resort check for fixtures and the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PG_VERSION = next(iter(sorted(os.listdir("/etc/postgresql"))), "15") if Path("/etc/postgresql").is_dir() else "15"
START = {
    "postgres": ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "start"],
    "redis": [
        "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
        "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
    ],
    "rabbitmq": ["rabbitmq-server", "-detached"],
}  # fmt: skip
STOP = {
    "postgres": ["pg_ctlcluster", "--skip-systemctl-redirect", "--mode=fast", PG_VERSION, "main", "stop"],
    "redis": ["redis-cli", "-p", "6379", "shutdown", "nosave"],
    "rabbitmq": ["rabbitmqctl", "stop"],
}
PORTS = {"postgres": 5432, "redis": 6379, "rabbitmq": 5672}


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def service_ready(name: str) -> bool:
    if not port_open(PORTS[name]):
        return False
    if name == "postgres":
        return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0
    if name == "rabbitmq":
        done = subprocess.run(
            ["rabbitmqctl", "-q", "await_startup", "--timeout", "5"], capture_output=True, check=False
        )
        return done.returncode == 0
    return True


def start_service(name: str, timeout: float = 120) -> None:
    if not service_ready(name):
        subprocess.run(START[name], capture_output=True, check=False, timeout=120)
        wait_for(lambda: service_ready(name), timeout, f"{name} to start", interval=0.25)


@contextlib.contextmanager
def service_stopped(name: str) -> Iterator[None]:
    """Stop a service for the body of the ``with``; it is started again whatever happens."""
    try:
        subprocess.run(STOP[name], capture_output=True, check=False, timeout=120)
        wait_for(lambda: not port_open(PORTS[name]), 60, f"{name} to stop", interval=0.1)
        yield
    finally:
        start_service(name)


def delete_queue(broker: str, queue: str) -> None:
    """Remove a test's queue from the broker (RabbitMQ keeps durable queues, Redis its lists)."""
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(broker, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(queue)


def ensure_services_up() -> None:
    """Start any of PostgreSQL, Redis and RabbitMQ that is down (never MariaDB: not ours to touch)."""
    for name in PORTS:
        start_service(name)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def others_running() -> list[str]:
    """Test runs and benchmarks of other people on this machine (``pytest`` or ``bench/``).

    Our own process, its ancestors and its descendants do not count.
    """
    mine = set()
    pid = os.getpid()
    while pid > 1:
        mine.add(pid)
        pid = _parent(pid)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        line = _cmdline(int(entry.name))
        if ("pytest" in line or "bench/" in line) and "pgrep" not in line:
            ancestor = _parent(int(entry.name))
            while ancestor > 1 and ancestor not in mine:
                ancestor = _parent(ancestor)
            if ancestor != os.getpid():
                found.append(f"{entry.name} {line[:160]}")
    return found


def children_of(pid: int) -> set[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


class Worker:
    """A ``celery worker`` subprocess in its own session (so the whole tree can be signalled).

    ``prefix`` runs it under another command (``ip netns exec <ns>``: a worker on its own host).
    """

    def __init__(self, env: dict, log: Path, name: str, concurrency: int = 2, prefix: list[str] | None = None):
        self.log = log
        self.name = name
        self.env = env
        command = [
            *(prefix or []), sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
            "-P", "prefork", "-c", str(concurrency), "-n", f"{name}@%h", "-l", "info",
            "--without-mingle", "--without-gossip", "-Q", env["DURABLE_TEST_QUEUE"],
        ]  # fmt: skip
        self.handle = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.frozen = False
        self.seen: set[int] = set()  # every pid of this worker seen so far (for a crash's record)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log.read_text()[-3000:]}")
            return " ready." in self.log.read_text()

        wait_for(ready, timeout, f"worker {self.name} to be ready")

    def pool(self) -> set[int]:
        found = children_of(self.pid)
        self.seen |= found
        return found

    def pids(self) -> set[int]:
        return {self.pid, *self.pool()}

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def freeze(self) -> None:
        self.signal_group(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.signal_group(signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL the worker and all its pool processes, and reap them."""
        if self.alive():
            self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)
        # Pool processes outlive a killed parent for a moment: wait until the group is gone.
        wait_for(lambda: not _group_alive(self.pid), 30, f"worker {self.name}'s processes to die")
        self.handle.close()

    def stop(self) -> None:
        if self.frozen:
            self.thaw()
        if self.alive():
            try:
                self.signal_group(signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg: look for a live member.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
