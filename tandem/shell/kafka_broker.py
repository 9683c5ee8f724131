"""Fetch a pinned Apache Kafka broker from Maven Central and run it in KRaft mode on loopback.

Standalone (standard library only): Maven resolves ``org.apache.kafka:kafka_2.13`` plus a log4j2
backend (``kafka-broker.pom.xml`` beside this module) into
``${TANDEM_CACHE_DIR:-~/.cache/tandem}/kafka-<v>/libs`` once; ``java`` then runs
``kafka.tools.StorageTool`` (format) and ``kafka.Kafka`` (serve).

One node, or N combined broker+controller nodes forming one cluster (a dynamic KRaft quorum of N
voters). Each node is a child process in its own session, logging to ``<state_dir>/kafka-<id>.log``.
Readiness is judged by a raw Kafka Metadata request to every node: the node must answer and list
all N brokers (only unfenced brokers are listed). The first node that exits normally leaves an
AppCDS class archive next to the jars, which later JVM starts use (about 1 s faster each).

Typical use::

    cluster = start_kafka(tmp / "kafka", nodes=3)
    try:
        ...  # bootstrap.servers = cluster.bootstrap
        kill_node(cluster.nodes[0])          # fault test
        node = start_node_again(cluster.nodes[0])
    finally:
        stop_kafka(cluster)
"""

from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

KAFKA_VERSION = "4.4.0"
"""The pinned Apache Kafka version (keep ``kafka.version`` in kafka-broker.pom.xml equal)."""

MIN_JAVA = 17
FETCH_TIMEOUT_S = 600.0
INSTALL_HINT = "apt-get install openjdk-17-jre-headless maven, or use --broker tansu"

POM_PATH = Path(__file__).with_name("kafka-broker.pom.xml")

JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",  # smallest footprint; pauses are tiny at this heap size
    "-XX:TieredStopAtLevel=1",  # C1 only: faster start, less CPU on a 2-core machine
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
"""JVM flags for every broker (a test/dev broker: quick start and small RSS over throughput)."""

_MARKER = "COMPLETE"
_LOG_TAIL_LINES = 6
_POLL_S = 0.2
_CLIENT_ID = b"tandem-launcher"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Popen objects of the nodes this process started: kept so they are reaped, not warned about.
_children: dict[int, subprocess.Popen[bytes]] = {}
# pid -> (temporary, final) path of the class-data archive that node writes when it exits.
_pending_dumps: dict[int, tuple[Path, Path]] = {}


class BrokerError(RuntimeError):
    """Kafka could not be fetched, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class KafkaNode:
    """One running (or stopped) combined broker+controller process."""

    node_id: int
    pid: int
    port: int
    controller_port: int
    log_path: Path
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of this node's client listener."""
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class KafkaCluster:
    """The nodes started together by :func:`start_kafka`."""

    nodes: tuple[KafkaNode, ...]
    version: str

    @property
    def bootstrap(self) -> str:
        """Comma-joined ``127.0.0.1:<port>`` of every node, for ``bootstrap.servers``."""
        return ",".join(node.bootstrap for node in self.nodes)


# --------------------------------------------------------------------------- prerequisites


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$TANDEM_CACHE_DIR``, else ``~/.cache/tandem``."""
    if cache_dir is not None:
        return cache_dir
    env = os.environ.get("TANDEM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tandem"


def libs_dir(cache_dir: Path | None = None) -> Path:
    """Where the jars of :data:`KAFKA_VERSION` live (complete only once :func:`fetch` returned)."""
    return cache_root(cache_dir) / f"kafka-{KAFKA_VERSION}" / "libs"


def _is_fetched(libs: Path) -> bool:
    jar = libs / f"kafka_2.13-{KAFKA_VERSION}.jar"
    return (libs.parent / _MARKER).is_file() and jar.is_file()


def _java_bin() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@functools.cache
def _java_version_text(java: str) -> str | None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stderr + out.stdout


def java_major(java: str) -> int | None:
    """The major version of the ``java`` executable (8 for ``1.8.0_x``), None if unreadable."""
    text = _java_version_text(java)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text or "")
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def java_problem(cache_dir: Path | None = None) -> str | None:
    """None when Kafka can run here, else a one-line message naming what to install.

    Needs ``java`` 17+ (``$JAVA_HOME/bin/java`` or on PATH) and, unless the jars are already in
    the cache, ``mvn`` on PATH.
    """
    need_mvn = not _is_fetched(libs_dir(cache_dir)) and shutil.which("mvn") is None
    java = _java_bin()
    if java is None:
        what = "Java 17+ and Maven" if need_mvn else "Java 17+"
        return f"Apache Kafka needs {what}: {INSTALL_HINT}"
    major = java_major(java)
    if major is None or major < MIN_JAVA:
        found = "an unreadable version" if major is None else f"Java {major}"
        return f"Apache Kafka needs Java 17+ but {java} is {found}: {INSTALL_HINT}"
    if need_mvn:
        return f"fetching Apache Kafka needs Maven (mvn) on PATH: {INSTALL_HINT}"
    return None


# --------------------------------------------------------------------------- fetch


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _one_line(lines: Sequence[str], limit: int = _LOG_TAIL_LINES) -> str:
    kept = [_ANSI.sub("", line).strip()[:300] for line in lines]
    kept = [line for line in kept if line][-limit:]
    return " | ".join(kept) if kept else "(no output)"


def _mvn_summary(lines: Sequence[str]) -> str:
    """Maven's first [ERROR] lines (the cause; the later ones are boilerplate), else its end."""
    errors = [line for line in lines if _ANSI.sub("", line).strip().startswith("[ERROR] ")]
    return _one_line(errors[:1] if errors else lines, 4)


def _run_mvn(cmd: list[str], quiet: bool, timeout_s: float) -> tuple[int | None, list[str]]:
    """Run Maven, echoing its output unless ``quiet``; (exit code or None on timeout, tail)."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    stream = proc.stdout
    assert stream is not None

    def pump() -> None:
        for line in stream:
            tail.append(line.rstrip("\n"))
            if not quiet:
                sys.stderr.write(line)

    reader = threading.Thread(target=pump, name="mvn-output", daemon=True)
    reader.start()
    code: int | None = None
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:  # timed out, or interrupted: leave no Maven behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    stream.close()
    return code, list(tail)


def fetch(cache_dir: Path | None = None, quiet: bool = True) -> Path:
    """The directory holding every runtime jar of Kafka :data:`KAFKA_VERSION`.

    Runs ``mvn dependency:copy-dependencies`` (bounded by :data:`FETCH_TIMEOUT_S`) only when the
    cache has no complete copy; a marker written last makes an interrupted download start over.
    Safe to call from concurrent processes (a file lock serialises them).
    """
    libs = libs_dir(cache_dir)
    if _is_fetched(libs):
        return libs
    home = libs.parent
    with _locked(home / ".lock"):
        if _is_fetched(libs):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(f"fetching Apache Kafka needs Maven (mvn) on PATH: {INSTALL_HINT}")
        if not POM_PATH.is_file():
            raise BrokerError(
                f"{POM_PATH} is missing; run from a tandem source checkout to fetch Kafka"
            )
        (home / _MARKER).unlink(missing_ok=True)
        partial = home / "libs.partial"
        for stale in (partial, libs):
            shutil.rmtree(stale, ignore_errors=True)
        # -U: retry artifacts whose earlier failure Maven cached in ~/.m2.
        cmd = [mvn, "-B", "-U", "-Dstyle.color=never", "-f", str(POM_PATH)]
        cmd += ["-q"] if quiet else []
        cmd += [
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
            f"-Dkafka.version={KAFKA_VERSION}",
        ]
        code, tail = _run_mvn(cmd, quiet, FETCH_TIMEOUT_S)
        if code is None:
            raise BrokerError(
                f"mvn timed out after {FETCH_TIMEOUT_S:.0f} s fetching Kafka {KAFKA_VERSION}; "
                f"check access to Maven Central and retry: {_mvn_summary(tail)}"
            )
        if code != 0 or not (partial / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise BrokerError(
                f"mvn failed (exit {code}) fetching Kafka {KAFKA_VERSION}; fix the cause and "
                f"retry: {_mvn_summary(tail)}"
            )
        partial.rename(libs)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        tmp = home / f"{_MARKER}.tmp"
        tmp.write_text("\n".join(jars) + "\n")
        tmp.rename(home / _MARKER)
    return libs


# --------------------------------------------------------------------------- Kafka protocol


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def _call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    """Send one request (header v1) and return the response body (header v0 stripped)."""
    header = struct.pack(">hhih", api_key, version, corr, len(_CLIENT_ID)) + _CLIENT_ID
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", data)
    if got != corr:
        raise ConnectionError(f"correlation id {got} != {corr}")
    return data[4:]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        text = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return text


def metadata_brokers(host: str, port: int, timeout_s: float = 2.0) -> set[int] | None:
    """Ids of the brokers that the node at ``host:port`` lists in a Metadata answer.

    None when it does not answer (yet). Uses ApiVersions v0 to pick a Metadata version (v1–v8).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            versions = _Reader(_call(sock, 18, 0, 1, b""))
            if versions.take(">h") != 0:
                return None
            top = None
            for _ in range(versions.take(">i")):
                key, low, high = versions.take(">h"), versions.take(">h"), versions.take(">h")
                if key == 3 and low <= 8 and high >= 1:
                    top = min(high, 8)
            if top is None:
                return None
            body = struct.pack(">i", 0)  # no topics
            body += b"\x00" if top >= 4 else b""  # allow_auto_topic_creation
            body += b"\x00\x00" if top >= 8 else b""  # include authorized operations
            reply = _Reader(_call(sock, 3, top, 2, body))
            if top >= 3:
                reply.take(">i")  # throttle_time_ms
            ids = set()
            for _ in range(reply.take(">i")):
                ids.add(reply.take(">i"))
                reply.string()  # host
                reply.take(">i")  # port
                reply.string()  # rack
            return ids
    except (OSError, struct.error, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- configuration


def _kafka_uuid() -> str:
    """A Kafka Uuid string: 16 random bytes, base64url without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _free_ports(count: int, taken: Sequence[int] = ()) -> list[int]:
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in taken:
                ports.append(port)
        return ports
    finally:
        for sock in socks:
            sock.close()


def server_properties(
    node_id: int, port: int, controller_ports: Mapping[int, int], data_dir: Path
) -> dict[str, str]:
    """The broker configuration of one node of an N-node cluster (N = len(controller_ports)).

    Every node is broker and controller; replication factors follow N (at most 3).
    """
    n = len(controller_ports)
    rf = str(min(n, 3))
    min_isr = "2" if n >= 3 else "1"
    quorum = ",".join(f"127.0.0.1:{controller_ports[i]}" for i in sorted(controller_ports))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.bootstrap.servers": quorum,
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_ports[node_id]}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # Like docker/compose.yaml: tandem creates its topics with explicit partition counts.
        "auto.create.topics.enable": "false",
        "num.partitions": "4",
        "default.replication.factor": rf,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min_isr,
        "share.coordinator.state.topic.num.partitions": "8",
        "group.initial.rebalance.delay.ms": "0",
        # Small footprint: fewer threads, small segments and indexes, small cleaner buffer.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "background.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.index.size.max.bytes": str(1024 * 1024),
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        # Fence a dead broker (and move its leaderships) in ~4 s instead of 9 s.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }


_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = out
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.loader.name = org.apache.kafka.image.loader.MetadataLoader
logger.loader.level = WARN
logger.periodic.name = org.apache.kafka.controller.PeriodicTaskControlManager
logger.periodic.level = WARN
logger.purgatory.name = org.apache.kafka.server.purgatory
logger.purgatory.level = WARN
logger.timer.name = org.apache.kafka.server.util.timer
logger.timer.level = WARN
"""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def _node_dir(node: KafkaNode) -> Path:
    return node.data_dir.parent


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] in {"Z", "X"}:
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")


def node_alive(node: KafkaNode) -> bool:
    """Whether ``node.pid`` is still this node's running ``kafka.Kafka`` process."""
    proc = _children.get(node.pid)
    if proc is not None and proc.poll() is not None:
        return False
    argv = _cmdline(node.pid)
    config = str(_node_dir(node) / "server.properties")
    return argv is not None and "kafka.Kafka" in argv and config in argv


def _signal(node: KafkaNode, sig: signal.Signals) -> None:
    if not node_alive(node):
        return
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(node.pid) == node.pid:
            os.killpg(node.pid, sig)
        else:
            os.kill(node.pid, sig)


def _gone(node: KafkaNode) -> bool:
    """Whether the node's process has exited (reaping it and keeping its class archive)."""
    proc = _children.get(node.pid)
    if proc is None:
        return not node_alive(node)
    if proc.poll() is None:
        return False
    del _children[node.pid]
    dump = _pending_dumps.pop(node.pid, None)
    if dump is not None:
        tmp, final = dump
        if proc.returncode != -signal.SIGKILL and tmp.is_file() and tmp.stat().st_size > 0:
            tmp.replace(final)
        else:
            tmp.unlink(missing_ok=True)
    return True


def _draining(node: KafkaNode) -> bool:
    """Whether the node's broker is down and only its KRaft client waits for a new leader."""
    try:
        with node.log_path.open("rb") as fh:
            fh.seek(max(0, node.log_path.stat().st_size - 65_536))
            text = fh.read().decode(errors="replace")
    except OSError:
        return False
    begin = text.rfind(f"[RaftManager id={node.node_id}] Beginning graceful shutdown")
    ended = max(text.rfind("Graceful shutdown completed"), text.rfind("Graceful shutdown timed"))
    return begin > max(text.rfind("\n==== "), ended)


def _only_draining(alive: Sequence[KafkaNode]) -> bool:
    """Whether every live member of the cluster waits for a leader that nobody can elect.

    A quorum leader that shuts down waits up to 5 s for a successor; when no other member can
    become one, that wait is pointless.
    """
    cluster = read_cluster(_node_dir(alive[0]).parent)
    peers = {n.node_id: n for n in (cluster.nodes if cluster else ())}
    peers.update({n.node_id: n for n in alive})
    live = [n for n in peers.values() if n in alive or node_alive(n)]
    return all(_draining(n) for n in live)


def _stop_all(
    nodes: Sequence[KafkaNode], timeout_s: float, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``sig`` to every node, SIGKILL whatever is left after ``timeout_s``, reap all."""
    for node in nodes:
        _signal(node, sig)
    deadline = time.monotonic() + timeout_s
    alive = [node for node in nodes if not _gone(node)]
    draining_since: float | None = None
    while alive and sig != signal.SIGKILL:
        now = time.monotonic()
        if not _only_draining(alive):
            draining_since = None
        elif draining_since is None:
            draining_since = now
        if now >= deadline or (draining_since is not None and now - draining_since >= 1.0):
            break
        time.sleep(_POLL_S)
        alive = [node for node in alive if not _gone(node)]
    for node in alive:
        _signal(node, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [node for node in alive if not _gone(node)]
    if alive:
        pids = [node.pid for node in alive]
        raise BrokerError(f"Kafka pids {pids} survived SIGKILL; kill them by hand")


def stop_node(node: KafkaNode, timeout_s: float = 15) -> None:
    """Stop one node: SIGTERM (controlled shutdown), SIGKILL after ``timeout_s``."""
    _stop_all([node], timeout_s)


def kill_node(node: KafkaNode) -> None:
    """SIGKILL one node (a crash, for fault tests: no controlled shutdown) and reap it."""
    _stop_all([node], 0, signal.SIGKILL)


def stop_kafka(cluster: KafkaCluster, timeout_s: float = 15) -> None:
    """Stop every node at once (SIGTERM, then SIGKILL after ``timeout_s``).

    Also stops the nodes restarted since (``start_node_again`` records their new pids in the
    state directory), so the cluster returned by :func:`start_kafka` is enough.
    """
    nodes = {node.pid: node for node in cluster.nodes}
    if cluster.nodes:
        current = read_cluster(_node_dir(cluster.nodes[0]).parent)
        nodes.update({node.pid: node for node in (current.nodes if current else ())})
    _stop_all(list(nodes.values()), timeout_s)


def _log_tail(path: Path) -> str:
    """One line saying why the latest run in ``path`` failed: its first ERROR, else its end."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 262_144))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    lines = text[text.rfind("\n==== ") + 1 :].splitlines()[1:]
    first = next((i for i, line in enumerate(lines) if " ERROR " in line), None)
    if first is None:
        return _one_line(lines, 4)
    picked = lines[first : first + 2]
    causes = [line for line in lines[first:] if line.startswith("Caused by:")]
    return _one_line(picked + causes[-1:], 3)


def _launch(argv: list[str], log_path: Path, banner: str) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {banner}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def _cds_flags(java: str, libs: Path, dump: bool) -> tuple[list[str], tuple[Path, Path] | None]:
    """JVM flags for the AppCDS class archive: use it if made, else (``dump``) make it at exit.

    The archive (keyed by the JVM build) cuts about a second of class loading from every JVM
    start. It is written by the first node of a cluster when that node exits normally, under a
    temporary name that is renamed only then. ``TANDEM_KAFKA_CDS=0`` turns this off.
    """
    if os.environ.get("TANDEM_KAFKA_CDS", "1") == "0":
        return [], None
    ident = f"{os.path.realpath(java)}\n{_java_version_text(java)}".encode()
    key = hashlib.sha256(ident).hexdigest()[:12]
    final = libs.parent / f"cds-{key}.jsa"
    if final.is_file():
        return [f"-XX:SharedArchiveFile={final}"], None
    if not dump:
        return [], None
    for stale in libs.parent.glob(f"cds-{key}.dump-*.jsa"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    tmp = libs.parent / f"cds-{key}.dump-{secrets.token_hex(4)}.jsa"
    return [f"-XX:ArchiveClassesAtExit={tmp}"], (tmp, final)


def _launch_java(
    argv: list[str], libs: Path, log_path: Path, banner: str, dump: bool = False
) -> subprocess.Popen[bytes]:
    """``_launch`` with the class-archive flags inserted after the java executable."""
    flags, pending = _cds_flags(argv[0], libs, dump)
    proc = _launch([argv[0], *flags, *argv[1:]], log_path, banner)
    if pending is not None:
        _pending_dumps[proc.pid] = pending
    return proc


def _format(java: str, libs: Path, nodes: Sequence[KafkaNode]) -> None:
    """Format every node's storage (concurrently) for one new cluster.

    One node: ``--standalone``. More: ``--initial-controllers id@host:port:dir-id,...`` naming
    every voter with a fresh metadata directory id (the same list on every node).
    """
    cluster_id = _kafka_uuid()
    quorum = ["--standalone"]
    if len(nodes) > 1:
        voters = [f"{n.node_id}@127.0.0.1:{n.controller_port}:{_kafka_uuid()}" for n in nodes]
        quorum = ["--initial-controllers", ",".join(voters)]
    running = []
    for node in nodes:
        argv = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
        argv += ["-cp", f"{libs}/*", "kafka.tools.StorageTool", "format"]
        argv += ["-t", cluster_id, "-c", str(_node_dir(node) / "server.properties"), *quorum]
        proc = _launch_java(argv, libs, node.log_path, "format")
        running.append((node.node_id, node.log_path, proc))
    failed = []
    for node_id, log_path, proc in running:
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        _children.pop(proc.pid, None)
        if code != 0:
            failed.append(f"node {node_id} (exit {code}): {_log_tail(log_path)}")
    if failed:
        raise BrokerError(f"formatting Kafka storage failed; see the logs: {'; '.join(failed)}")


def _wait_ready(nodes: Sequence[KafkaNode], expected: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing: dict[int, object] = {}
        for node in nodes:
            proc = _children.get(node.pid)
            if proc is not None and proc.poll() is not None:
                raise BrokerError(
                    f"Kafka node {node.node_id} exited with code {proc.returncode} while "
                    f"starting; read {node.log_path}: {_log_tail(node.log_path)}"
                )
            seen = metadata_brokers("127.0.0.1", node.port)
            if seen is None or not expected <= seen:
                missing[node.node_id] = "no answer" if seen is None else sorted(seen)
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka not ready after {timeout_s:g} s (node: brokers seen = {missing}); "
                f"read {nodes[0].log_path.parent}/kafka-*.log"
            )
        time.sleep(_POLL_S)


def _save_cluster(state_dir: Path, cluster: KafkaCluster) -> None:
    doc = {
        "version": cluster.version,
        "nodes": [
            {
                "node_id": n.node_id,
                "pid": n.pid,
                "port": n.port,
                "controller_port": n.controller_port,
                "log_path": str(n.log_path),
                "data_dir": str(n.data_dir),
            }
            for n in cluster.nodes
        ],
    }
    _write_atomic(state_dir / "cluster.json", json.dumps(doc, indent=2) + "\n")


def read_cluster(state_dir: Path) -> KafkaCluster | None:
    """The cluster last started (or restarted) in ``state_dir``, None if there is none.

    Its pids may be stale: check with :func:`node_alive`.
    """
    try:
        doc = json.loads((state_dir / "cluster.json").read_text())
        nodes = tuple(
            KafkaNode(
                node_id=int(n["node_id"]),
                pid=int(n["pid"]),
                port=int(n["port"]),
                controller_port=int(n["controller_port"]),
                log_path=Path(n["log_path"]),
                data_dir=Path(n["data_dir"]),
            )
            for n in doc["nodes"]
        )
        return KafkaCluster(nodes=nodes, version=str(doc["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _java_or_raise(cache_dir: Path | None) -> str:
    problem = java_problem(cache_dir)
    java = _java_bin()
    if problem is not None or java is None:
        raise BrokerError(problem or f"Apache Kafka needs Java 17+: {INSTALL_HINT}")
    return java


def _plan_node(
    state_dir: Path,
    node_id: int,
    port: int,
    controller_ports: Mapping[int, int],
    extra_properties: Mapping[str, str] | None,
) -> KafkaNode:
    """Lay out a fresh ``kafka-<id>/`` (server.properties, empty data/); pid 0 until started."""
    node_dir = state_dir / f"kafka-{node_id}"
    shutil.rmtree(node_dir, ignore_errors=True)
    data_dir = node_dir / "data"
    data_dir.mkdir(parents=True)
    props = server_properties(node_id, port, controller_ports, data_dir)
    props.update(extra_properties or {})
    _write_atomic(node_dir / "server.properties", "".join(f"{k}={v}\n" for k, v in props.items()))
    log_path = state_dir / f"kafka-{node_id}.log"
    log_path.unlink(missing_ok=True)
    return KafkaNode(node_id, 0, port, controller_ports[node_id], log_path, data_dir)


def start_kafka(
    state_dir: Path,
    nodes: int = 1,
    ports: list[int] | None = None,
    timeout_s: float = 90,
    *,
    cache_dir: Path | None = None,
    extra_properties: Mapping[str, str] | None = None,
) -> KafkaCluster:
    """Format fresh storage under ``state_dir`` and start ``nodes`` Kafka nodes on 127.0.0.1.

    ``ports`` are the client ports (free ones when None); controller ports are always free ones.
    ``extra_properties`` override :func:`server_properties` on every node. Returns once every
    node answers a Metadata request listing all ``nodes`` brokers; on failure stops what it
    started and raises :class:`BrokerError` with the log tail.
    """
    if nodes < 1:
        raise BrokerError(f"nodes must be >= 1, got {nodes}")
    if ports is not None and len(ports) != nodes:
        raise BrokerError(f"give one port per node: {nodes} nodes, {len(ports)} ports")
    java = _java_or_raise(cache_dir)
    libs = fetch(cache_dir)
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = read_cluster(state_dir)
    if previous is not None and any(node_alive(n) for n in previous.nodes):
        raise BrokerError(
            f"a Kafka cluster from {state_dir} is still running "
            f"(pids {[n.pid for n in previous.nodes]}); stop it first "
            "(stop_kafka(read_cluster(state_dir)))"
        )
    client_ports = list(ports) if ports else _free_ports(nodes)
    ids = list(range(1, nodes + 1))
    controller_ports = dict(zip(ids, _free_ports(nodes, taken=client_ports), strict=True))
    log4j = state_dir / "log4j2.properties"
    _write_atomic(log4j, _LOG4J2)

    planned = [
        _plan_node(state_dir, node_id, port, controller_ports, extra_properties)
        for node_id, port in zip(ids, client_ports, strict=True)
    ]
    _format(java, libs, planned)

    started: list[KafkaNode] = []
    try:
        for node in planned:
            node_dir = _node_dir(node)
            argv = [java, *JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}"]
            argv += ["-cp", f"{libs}/*", "kafka.Kafka", str(node_dir / "server.properties")]
            launch = {"argv": argv, "libs": str(libs)}
            _write_atomic(node_dir / "launch.json", json.dumps(launch, indent=1) + "\n")
            banner = f"start node {node.node_id}"
            proc = _launch_java(argv, libs, node.log_path, banner, dump=node.node_id == 1)
            started.append(replace(node, pid=proc.pid))
        cluster = KafkaCluster(nodes=tuple(started), version=KAFKA_VERSION)
        _save_cluster(state_dir, cluster)
        _wait_ready(started, set(ids), timeout_s)
    except BaseException:
        with contextlib.suppress(BrokerError):
            _stop_all(started, 5)
        raise
    return cluster


def start_node_again(node: KafkaNode, timeout_s: float = 60) -> KafkaNode:
    """Restart a stopped or killed node with its config and data; returns it with its new pid.

    Waits until the node answers a Metadata request that lists itself (it is unfenced); other
    nodes are not required. Catching up (ISR) is left to the caller to observe.
    """
    if not _gone(node):
        raise BrokerError(f"Kafka node {node.node_id} (pid {node.pid}) is still running")
    node_dir = _node_dir(node)
    try:
        launch = json.loads((node_dir / "launch.json").read_text())
        argv = [str(a) for a in launch["argv"]]
        libs = Path(launch["libs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BrokerError(f"{node_dir}/launch.json unreadable ({e}); start a new cluster") from e
    proc = _launch_java(argv, libs, node.log_path, f"restart node {node.node_id}")
    again = replace(node, pid=proc.pid)
    try:
        _wait_ready([again], {node.node_id}, timeout_s)
    except BaseException:
        with contextlib.suppress(BrokerError):
            _stop_all([again], 5)
        raise
    state_dir = node_dir.parent
    cluster = read_cluster(state_dir)
    if cluster is not None:
        nodes = tuple(again if n.node_id == node.node_id else n for n in cluster.nodes)
        _save_cluster(state_dir, replace(cluster, nodes=nodes))
    return again
