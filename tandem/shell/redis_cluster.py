"""Start and stop a throwaway Redis Cluster on loopback, for development and tests.

Six ``redis-server`` processes by default (three masters, one replica each) on 127.0.0.1, no
persistence, a short ``cluster-node-timeout`` so a killed master is replaced within a few
seconds. Every node gets its own directory under the state directory, holding its
``redis.conf``, its ``nodes.conf`` (the cluster state, which lets a killed node rejoin) and its
log file ``redis.log``. The cluster is formed with ``redis-cli --cluster create``.

Standalone: the standard library only (it speaks RESP over a socket itself). Typical test use::

    cluster = start_cluster(tmp_path / "redis-cluster")
    try:
        victim = next(n for n in cluster.nodes if n.port == masters(cluster)[0])
        kill_node(victim)
        wait_healthy(cluster, timeout_s=20)  # a replica has taken over the slots
        cluster = cluster.with_node(start_node_again(victim))
        wait_healthy(cluster, timeout_s=20)  # the old master is back, now as a replica
    finally:
        stop_cluster(cluster)

Processes are started in their own session (``start_new_session=True``): a Ctrl-C in the
terminal does not reach them, and they outlive the Python process unless ``stop_cluster`` is
called.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "HOST",
    "ClusterError",
    "RedisCluster",
    "RedisNode",
    "kill_node",
    "masters",
    "replicas_of",
    "start_cluster",
    "start_node_again",
    "stop_cluster",
    "wait_healthy",
]

HOST = "127.0.0.1"
"""The address every node binds to and announces."""

BUS_PORT_OFFSET = 10000
"""Redis Cluster's node-to-node bus listens on the client port plus this offset."""

SLOTS = 16384
DEFAULT_NODE_TIMEOUT_MS = 1000
_MAX_PORT = 65535 - BUS_PORT_OFFSET  # the bus port must be a valid port too
_MIN_PORT = 10000
_POLL_S = 0.1
_QUERY_TIMEOUT_S = 1.0
_TERMINATING = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})

# Popen objects of the servers this process started, by pid: kept so they are reaped.
_procs: dict[int, subprocess.Popen[bytes]] = {}
# The newest pid started for each node directory, so stop_cluster also stops restarted nodes.
_latest_pid: dict[Path, int] = {}


class ClusterError(RuntimeError):
    """The cluster could not be started, checked or stopped; the message says what to do."""


@dataclass(frozen=True, slots=True)
class RedisNode:
    """One ``redis-server`` process of the cluster."""

    port: int
    pid: int
    log_path: Path
    data_dir: Path

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{HOST}:{self.port}"


@dataclass(frozen=True, slots=True)
class RedisCluster:
    """The nodes of a cluster started by :func:`start_cluster`, in the order of their ports."""

    nodes: tuple[RedisNode, ...]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port of the first node>``.

        One seed node is enough for a cluster client to discover the rest, but if that node is
        down when the client starts, discovery fails: prefer :attr:`startup_nodes` when you
        can pass several.
        """
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, to seed a cluster client."""
        return [(HOST, node.port) for node in self.nodes]

    @property
    def ports(self) -> list[int]:
        """The client ports of all nodes."""
        return [node.port for node in self.nodes]

    def node(self, port: int) -> RedisNode:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise ClusterError(
            f"no node of this cluster listens on port {port}; use one of {self.ports}"
        )

    def with_node(self, node: RedisNode) -> RedisCluster:
        """A copy of this cluster with the node on ``node.port`` replaced (after a restart)."""
        self.node(node.port)
        return RedisCluster(tuple(node if n.port == node.port else n for n in self.nodes))


# --- processes -------------------------------------------------------------------------------


def _binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ClusterError(f"{name} was not found on PATH: {hint}")
    return path


def _redis_server() -> str:
    return _binary("redis-server", "apt-get install redis-server (macOS: brew install redis)")


def _redis_cli() -> str:
    return _binary("redis-cli", "apt-get install redis-tools (macOS: brew install redis)")


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _write_config(data_dir: Path, port: int, node_timeout_ms: int) -> Path:
    """Write ``redis.conf`` for one node: cluster mode, no persistence, loopback only."""
    lines = [
        f"port {port}",
        f"bind {HOST}",
        "daemonize no",
        'logfile ""',  # stdout, redirected to redis.log
        f"dir {_quote(str(data_dir))}",
        'save ""',
        "appendonly no",
        "rdb-del-sync-files yes",  # no RDB left behind by replication
        "repl-diskless-sync-delay 0",  # replicas sync at once instead of after 5 s
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        f"cluster-node-timeout {node_timeout_ms}",
        # A replica always takes over a failed master, however long it was disconnected.
        "cluster-replica-validity-factor 0",
    ]
    conf = data_dir / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _spawn(node_dir: Path, port: int) -> RedisNode:
    """Start ``redis-server`` with the ``redis.conf`` in ``node_dir``; do not wait for it."""
    log_path = node_dir / "redis.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [_redis_server(), str(node_dir / "redis.conf")],
            cwd=node_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _procs[proc.pid] = proc
    _latest_pid[node_dir] = proc.pid
    return RedisNode(port=port, pid=proc.pid, log_path=log_path, data_dir=node_dir)


def _running(pid: int, port: int) -> bool:
    """Whether ``pid`` is still the redis-server on ``port`` (guards against reused pids)."""
    proc = _procs.get(pid)
    if proc is not None:
        return proc.poll() is None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.is_dir():  # Linux: check what the pid is now
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"redis-server" in text and f":{port}".encode() in text
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exited(pid: int, port: int, timeout_s: float) -> bool:
    """Wait (bounded) for ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + timeout_s
    while _running(pid, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    _procs.pop(pid, None)
    return True


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return "(no log)"


def _pids_of(node: RedisNode) -> list[int]:
    pids = [node.pid]
    latest = _latest_pid.get(node.data_dir)
    if latest is not None and latest != node.pid:
        pids.append(latest)
    return pids


def _stop_nodes(nodes: Iterable[RedisNode], timeout_s: float) -> None:
    """SIGTERM every process of ``nodes`` at once, then SIGKILL what is left after the wait."""
    targets = [(pid, node.port) for node in nodes for pid in _pids_of(node)]
    targets = [(pid, port) for pid, port in targets if _running(pid, port)]
    for pid, _ in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid, port in targets:
        if not _exited(pid, port, max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _exited(pid, port, 5.0)


# --- ports -----------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_usable(port: int) -> bool:
    return _bindable(port) and _bindable(port + BUS_PORT_OFFSET)


def _candidate_range() -> range:
    """Ports whose bus port stays below the ephemeral range when possible (fewer collisions)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = min(low - BUS_PORT_OFFSET, _MAX_PORT)
    if top - _MIN_PORT >= 1000:
        return range(_MIN_PORT, top)
    return range(_MIN_PORT, _MAX_PORT)


def pick_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 whose bus port (+10000) is free too."""
    candidates = _candidate_range()
    chosen: list[int] = []
    for port in random.sample(candidates, min(len(candidates), 50 * count)):
        if port + BUS_PORT_OFFSET in chosen or port - BUS_PORT_OFFSET in chosen:
            continue
        if _port_usable(port):
            chosen.append(port)
            if len(chosen) == count:
                return sorted(chosen)
    raise ClusterError(
        f"found no {count} free port pairs (port and port+{BUS_PORT_OFFSET}) on {HOST}; "
        "stop some local services or pass ports=[...]"
    )


def _check_ports(ports: list[int]) -> None:
    if len(set(ports)) != len(ports):
        raise ClusterError(f"ports must be distinct, got {ports}")
    for port in ports:
        if not 1024 <= port <= _MAX_PORT:
            raise ClusterError(
                f"port {port} is out of range: pick ports in 1024..{_MAX_PORT} "
                f"(the cluster bus uses port+{BUS_PORT_OFFSET})"
            )
        if port + BUS_PORT_OFFSET in ports:
            raise ClusterError(f"port {port + BUS_PORT_OFFSET} is the cluster bus of port {port}")
        if not _port_usable(port):
            raise ClusterError(
                f"port {port} or its bus port {port + BUS_PORT_OFFSET} is in use on {HOST}; "
                "pass other ports, or ports=None to pick free ones"
            )


# --- talking to nodes ------------------------------------------------------------------------


class _ReplyError(Exception):
    """An error reply (``-ERR ...``) from a node; the connection stays usable."""


class _Conns:
    """One plain RESP connection per port (stdlib sockets); replies come back as strings.

    Connection trouble raises :class:`OSError` (and drops the connection, so the next query
    reconnects); an error reply raises :class:`_ReplyError`.
    """

    def __init__(self) -> None:
        self._conns: dict[int, tuple[socket.socket, BinaryIO]] = {}

    def _connect(self, port: int) -> tuple[socket.socket, BinaryIO]:
        conn = self._conns.get(port)
        if conn is None:
            sock = socket.create_connection((HOST, port), timeout=_QUERY_TIMEOUT_S)
            conn = (sock, sock.makefile("rb"))
            self._conns[port] = conn
        return conn

    def query(self, port: int, *args: str) -> str:
        """Send one command, return its reply (simple string, integer or bulk string)."""
        try:
            sock, reader = self._connect(port)
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(parts))
            return self._reply(reader)
        except OSError:
            self._drop(port)
            raise

    @staticmethod
    def _reply(reader: BinaryIO) -> str:
        line = reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the node")
        kind, body = line[:1], line[1:-2].decode(errors="replace")
        if kind in (b"+", b":"):
            return body
        if kind == b"-":
            raise _ReplyError(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return ""
            data = reader.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("connection closed by the node")
            return data[:-2].decode(errors="replace")
        raise ConnectionError(f"unexpected reply type {kind!r}")

    def alive(self, port: int) -> bool:
        """Whether the node answers at all (an error reply such as LOADING counts as alive)."""
        try:
            self.query(port, "PING")
        except OSError:
            return False
        except _ReplyError:
            return True
        return True

    def _drop(self, port: int) -> None:
        conn = self._conns.pop(port, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn[1].close()
                conn[0].close()

    def close(self) -> None:
        """Close every connection."""
        for port in list(self._conns):
            self._drop(port)


@contextlib.contextmanager
def _connections() -> Iterator[_Conns]:
    conns = _Conns()
    try:
        yield conns
    finally:
        conns.close()


def _fields(text: str) -> dict[str, str]:
    """``key:value`` lines of CLUSTER INFO / INFO as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class _NodeLine:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[str, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_nodes(text: str) -> list[_NodeLine]:
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 8:
            continue
        address = parts[1].split(",", 1)[0].split("@", 1)[0]
        port = int(address.rpartition(":")[2] or 0)
        lines.append(
            _NodeLine(
                node_id=parts[0],
                port=port,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=tuple(s for s in parts[8:] if not s.startswith("[")),
            )
        )
    return lines


def _view(conns: _Conns, cluster: RedisCluster) -> list[_NodeLine]:
    """CLUSTER NODES as seen by the first node of ``cluster`` that answers."""
    for node in cluster.nodes:
        with contextlib.suppress(OSError, _ReplyError):
            return _parse_nodes(conns.query(node.port, "CLUSTER", "NODES"))
    raise ClusterError(
        f"no node of the cluster answers on ports {cluster.ports}; start it with start_cluster()"
    )


def masters(cluster: RedisCluster) -> list[int]:
    """Ports of the current masters that serve slots, as seen by the first node that answers.

    Masters flagged ``fail`` are left out; a master killed moments ago is still listed until
    the cluster has noticed (``cluster-node-timeout``), so call :func:`wait_healthy` first.
    """
    with _connections() as conns:
        view = _view(conns, cluster)
    return sorted(n.port for n in view if n.is_master and n.slots and "fail" not in n.flags)


def replicas_of(cluster: RedisCluster, master_port: int) -> list[int]:
    """Ports of the replicas of the master on ``master_port`` (not flagged ``fail``)."""
    with _connections() as conns:
        view = _view(conns, cluster)
    ids = [n.node_id for n in view if n.port == master_port]
    if not ids:
        raise ClusterError(f"port {master_port} is not a node of this cluster: {cluster.ports}")
    return sorted(
        n.port
        for n in view
        if "slave" in n.flags and n.master_id == ids[0] and "fail" not in n.flags
    )


# --- health ----------------------------------------------------------------------------------


_Row = tuple[int, bool, int | None, tuple[str, ...]]
"""(port, is master, port of its master, slots) of one running node."""


def _summary(view: list[_NodeLine], live: list[int]) -> tuple[str | None, tuple[_Row, ...]]:
    """(problem, the configuration of the running nodes) from one node's CLUSTER NODES."""
    by_id = {n.node_id: n for n in view}
    by_port = {n.port: n for n in view}
    dead_owners = sorted(n.port for n in view if n.slots and n.port not in live)
    if dead_owners:
        return f"slots are still served by stopped node(s) {dead_owners}", ()
    rows: list[_Row] = []
    for port in live:
        line = by_port.get(port)
        if line is None:
            return f"node {port} is not known yet", ()
        if line.failing:
            return f"node {port} is flagged {','.join(sorted(line.flags))}", ()
        master = by_id.get(line.master_id or "")
        rows.append((port, line.is_master, master.port if master else None, line.slots))
    return None, tuple(rows)


def _check_node(conns: _Conns, port: int, n_nodes: int) -> str | None:
    info = _fields(conns.query(port, "CLUSTER", "INFO"))
    if info.get("cluster_state") != "ok":
        return f"cluster_state:{info.get('cluster_state')}"
    for key in ("cluster_slots_assigned", "cluster_slots_ok"):
        if info.get(key) != str(SLOTS):
            return f"{key}:{info.get(key)}"
    if int(info.get("cluster_known_nodes", "0")) < n_nodes:
        return f"cluster_known_nodes:{info.get('cluster_known_nodes')} of {n_nodes}"
    return None


def _check_replica(conns: _Conns, port: int) -> str | None:
    info = _fields(conns.query(port, "INFO", "replication"))
    if info.get("role") != "slave":
        return f"role:{info.get('role')}"
    if info.get("master_link_status") != "up":
        return f"master_link_status:{info.get('master_link_status')}"
    if info.get("master_sync_in_progress") != "0":
        return "initial sync in progress"
    return None


def _agreed_config(
    conns: _Conns, cluster: RedisCluster, live: list[int]
) -> tuple[str | None, tuple[_Row, ...]]:
    """(problem, configuration) once every running node is ok and all agree on the config."""
    reference: tuple[_Row, ...] | None = None
    for port in live:
        summary: tuple[_Row, ...] = ()
        try:
            problem = _check_node(conns, port, len(cluster.nodes))
            if problem is None:
                view = _parse_nodes(conns.query(port, "CLUSTER", "NODES"))
                problem, summary = _summary(view, live)
        except (OSError, _ReplyError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            return f"{HOST}:{port}: {problem}", ()
        if reference is None:
            reference = summary
        elif summary != reference:
            return f"{HOST}:{port} and {HOST}:{live[0]} disagree on the configuration", ()
    return None, reference or ()


def _check_roles(conns: _Conns, rows: tuple[_Row, ...], replicas: int | None) -> str | None:
    """Every master serves slots, every replica follows a running master with its link up."""
    running = {row[0] for row in rows}
    n_replicas: dict[int, int] = {}
    for port, is_master, master_port, slots in rows:
        if is_master:
            if not slots:
                return f"{HOST}:{port}: master without slots"
            n_replicas.setdefault(port, 0)
            continue
        if master_port is None or master_port not in running:
            return f"{HOST}:{port}: its master {master_port} is not running"
        n_replicas[master_port] = n_replicas.get(master_port, 0) + 1
        try:
            problem = _check_replica(conns, port)
        except (OSError, _ReplyError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            return f"{HOST}:{port}: {problem}"
    if replicas is not None:
        other = {m: c for m, c in n_replicas.items() if c != replicas}
        if other:
            return f"masters with other than {replicas} replica(s): {other}"
    return None


def _problem(conns: _Conns, cluster: RedisCluster, replicas: int | None) -> str | None:
    """What is not healthy yet, or None. ``replicas``: also require that many per master."""
    live = [n.port for n in cluster.nodes if conns.alive(n.port)]
    if not live:
        return "no node answers"
    problem, rows = _agreed_config(conns, cluster, live)
    if problem is not None:
        return problem
    return _check_roles(conns, rows, replicas)


def _wait_until_healthy(cluster: RedisCluster, deadline: float, replicas: int | None) -> None:
    started = time.monotonic()
    problem: str | None = "not checked"
    with _connections() as conns:
        while True:
            problem = _problem(conns, cluster, replicas)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_S)
    logs = sorted({str(n.log_path.parent.parent) for n in cluster.nodes})
    raise ClusterError(
        f"the Redis cluster is not healthy after {time.monotonic() - started:.1f} s ({problem}); "
        f"see the redis.log files under {', '.join(logs)}"
    )


def wait_healthy(cluster: RedisCluster, timeout_s: float = 30.0) -> None:
    """Wait until the cluster serves every slot from running nodes, all agreeing on it.

    A node is running if it answers (a killed or SIGSTOPped node is ignored). Healthy means,
    on every running node: ``cluster_state:ok`` with all 16384 slots assigned and ok, the same
    view of which running node is a master (serving which slots) or a replica (of which
    master), no running node flagged as failing, no slots left on a stopped node; and every
    running replica has its replication link up. So after killing a master this waits for a
    replica to take over, and after :func:`start_node_again` it waits until the old master has
    rejoined as a replica and synced. Raises :class:`ClusterError` after ``timeout_s``.
    """
    _wait_until_healthy(cluster, time.monotonic() + timeout_s, replicas=None)


# --- start / stop ----------------------------------------------------------------------------


def _wait_answering(nodes: list[RedisNode], deadline: float) -> None:
    with _connections() as conns:
        pending = list(nodes)
        while pending:
            for node in list(pending):
                if not _running(node.pid, node.port):
                    raise ClusterError(
                        f"redis-server on port {node.port} exited at start; "
                        f"see {node.log_path}:\n{_tail(node.log_path)}"
                    )
                if conns.alive(node.port):
                    pending.remove(node)
            if pending and time.monotonic() >= deadline:
                raise ClusterError(
                    f"redis-server on port(s) {[n.port for n in pending]} did not answer in time; "
                    f"see {pending[0].log_path}"
                )
            if pending:
                time.sleep(0.05)


def _create(state_dir: Path, nodes: list[RedisNode], replicas: int, deadline: float) -> None:
    """Run ``redis-cli --cluster create`` and check its exit status."""
    log_path = state_dir / "cluster-create.log"
    cmd = [
        _redis_cli(),
        "--cluster",
        "create",
        *(n.address for n in nodes),
        "--cluster-replicas",
        str(replicas),
        "--cluster-yes",
    ]
    with log_path.open("wb") as out:
        try:
            result = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(
                f"redis-cli --cluster create did not finish in time; see {log_path}"
            ) from None
    if result.returncode != 0:
        raise ClusterError(
            f"redis-cli --cluster create failed (exit {result.returncode}); see {log_path}:\n"
            f"{_tail(log_path)}"
        )


def _start_once(
    state_dir: Path, ports: list[int], replicas: int, deadline: float, node_timeout_ms: int
) -> RedisCluster:
    nodes: list[RedisNode] = []
    try:
        for port in ports:
            node_dir = state_dir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("nodes.conf", "dump.rdb", "redis.log"):
                (node_dir / stale).unlink(missing_ok=True)
            _write_config(node_dir, port, node_timeout_ms)
            nodes.append(_spawn(node_dir, port))
        _wait_answering(nodes, deadline)
        _create(state_dir, nodes, replicas, deadline)
        cluster = RedisCluster(tuple(nodes))
        _wait_until_healthy(cluster, deadline, replicas=replicas)
    except BaseException:
        _stop_nodes(nodes, timeout_s=5.0)
        raise
    return cluster


def start_cluster(
    state_dir: Path,
    ports: list[int] | None = None,
    replicas: int = 1,
    timeout_s: float = 30.0,
    *,
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
) -> RedisCluster:
    """Start a Redis Cluster on 127.0.0.1 and wait until it is healthy.

    ``ports``: the client ports, one per node (their bus ports, +10000, must be free too);
    by default ``3 * (replicas + 1)`` free ports are picked, i.e. three masters. Their number
    must be a multiple of ``replicas + 1`` with at least three masters. Node ``i`` lives in
    ``state_dir/node-<port>`` (stale cluster state there is removed). Returns once every node
    reports ``cluster_state:ok`` with all 16384 slots assigned, agrees on the configuration,
    and every master has ``replicas`` replicas with their replication link up. On failure or
    after ``timeout_s`` the started processes are stopped and :class:`ClusterError` is raised.
    """
    _redis_server()
    _redis_cli()
    if replicas < 0:
        raise ClusterError(f"replicas must be >= 0, got {replicas}")
    count = len(ports) if ports is not None else 3 * (replicas + 1)
    if count % (replicas + 1) != 0 or count // (replicas + 1) < 3:
        raise ClusterError(
            f"{count} nodes cannot make a cluster with {replicas} replica(s) per master: "
            f"pass a multiple of {replicas + 1} ports, at least {3 * (replicas + 1)}"
        )
    if node_timeout_ms < 100:
        raise ClusterError(f"node_timeout_ms={node_timeout_ms} is too small; use 1000 or more")
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    attempts = 1 if ports is not None else 3
    for attempt in range(1, attempts + 1):
        chosen = list(ports) if ports is not None else pick_ports(count)
        _check_ports(chosen)
        try:
            return _start_once(state_dir, chosen, replicas, deadline, node_timeout_ms)
        except ClusterError as e:
            # Someone may have taken an auto-picked port between the check and the start.
            if attempt == attempts or "exited at start" not in str(e):
                raise
    raise AssertionError("unreachable")


def kill_node(node: RedisNode, sig: int = signal.SIGKILL, timeout_s: float = 15.0) -> None:
    """Send ``sig`` to the node's process; for SIGKILL/SIGTERM/SIGINT/SIGQUIT wait until it exits.

    SIGKILL simulates a crash; SIGSTOP a hung node (resume it with SIGCONT).
    """
    if not _running(node.pid, node.port):
        raise ClusterError(
            f"redis-server {node.address} (pid {node.pid}) is not running; "
            "use the RedisNode returned by start_node_again() after a restart"
        )
    os.kill(node.pid, sig)
    if sig in _TERMINATING and not _exited(node.pid, node.port, timeout_s):
        raise ClusterError(
            f"redis-server {node.address} (pid {node.pid}) did not exit within {timeout_s:.0f} s "
            f"of signal {sig}; kill it with SIGKILL"
        )


def start_node_again(node: RedisNode, timeout_s: float = 10.0) -> RedisNode:
    """Restart a killed node with its old configuration and cluster state (``nodes.conf``).

    It rejoins the cluster: a former master whose slots a replica took over comes back as a
    replica of that new master. Returns once the process answers; call :func:`wait_healthy`
    (with ``cluster.with_node(new_node)``) to wait until it has rejoined and synced.
    """
    for pid in _pids_of(node):
        if _running(pid, node.port):
            raise ClusterError(
                f"redis-server {node.address} is still running (pid {pid}); kill_node() it first"
            )
    if not (node.data_dir / "redis.conf").is_file():
        raise ClusterError(
            f"{node.data_dir} has no redis.conf; start the cluster with start_cluster()"
        )
    restarted = _spawn(node.data_dir, node.port)
    try:
        _wait_answering([restarted], time.monotonic() + timeout_s)
    except BaseException:
        _stop_nodes([restarted], timeout_s=5.0)
        raise
    return restarted


def stop_cluster(cluster: RedisCluster, timeout_s: float = 10.0) -> None:
    """Stop every node (SIGTERM, then SIGKILL after ``timeout_s``), restarted ones included.

    Idempotent; node directories and logs are left in place for inspection.
    """
    _stop_nodes(cluster.nodes, timeout_s)
