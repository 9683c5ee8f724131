"""``tandem dev``: start, report and stop development services on the configured addresses.

The broker is Apache Kafka (one node, or a KRaft cluster of several on consecutive free ports) or
the embedded Tansu broker; Redis is one ``redis-server`` or a six-node Redis Cluster. What
``up`` started is recorded in ``STATE_DIR/dev.json``, and ``down`` stops only that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from tandem.contracts.exceptions import ServiceError
from tandem.contracts.kafka import ensure_base_topics
from tandem.contracts.settings import Settings
from tandem.shell import devservices

log = logging.getLogger(__name__)

STATE_FILE = "dev.json"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service as ``tandem dev status`` reports it."""

    name: str
    address: str
    answering: bool
    started: dict[str, Any] | None

    def describe(self) -> str:
        """One line for people."""
        if self.started is None:
            owner = "not started by tandem"
        else:
            owner = f"{self.started['label']}, started by tandem"
        state = "up" if self.answering else "DOWN"
        return f"{self.name:<7} {self.address:<22} {state:<5} ({owner})"


def _addresses(settings: Settings) -> tuple[tuple[str, int], tuple[str, int]]:
    host, _, port = settings.kafka.split(",")[0].rpartition(":")
    url = urlsplit(settings.redis_url.get_secret_value())
    return (host or "127.0.0.1", int(port)), (url.hostname or "127.0.0.1", url.port or 6379)


def _load(state_dir: Path) -> dict[str, dict[str, Any]]:
    path = state_dir / STATE_FILE
    if not path.exists():
        return {}
    recorded: dict[str, dict[str, Any]] = orjson.loads(path.read_bytes())
    return {
        name: service
        for name, service in recorded.items()
        if any(devservices.pid_alive(pid) for pid in service["pids"])
    }


def _save(state_dir: Path, started: dict[str, dict[str, Any]]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_bytes(orjson.dumps(started, option=orjson.OPT_INDENT_2))


def up(
    settings: Settings, broker: str = "auto", brokers: int = 1, redis_cluster: bool = False
) -> list[ServiceStatus]:
    """Start whatever of broker and Redis does not answer yet; harmless when run twice."""
    (khost, kport), (rhost, rport) = _addresses(settings)
    started = _load(settings.state_dir)
    try:  # recorded even when the next one fails, so `down` stops what did start
        if not devservices.redis_answers(rhost, rport):
            started["redis"] = _start_redis(settings.state_dir, rport, redis_cluster)
        if not devservices.kafka_answers(f"{khost}:{kport}"):
            started["broker"] = _start_broker(settings.state_dir, kport, broker, brokers)
    finally:
        _save(settings.state_dir, started)
    replicas = started.get("broker", {}).get("nodes", 1)
    ensure_base_topics(settings.model_copy(update={"replication_factor": min(3, replicas)}))
    return status(settings)


def _start_redis(state_dir: Path, port: int, cluster: bool) -> dict[str, Any]:
    if not cluster:
        service = devservices.start_redis(port, state_dir)
        url = f"redis://127.0.0.1:{port}/0"
        return {"mode": "standalone", "url": url, "pids": [service.pid], "label": "redis-server"}
    from tandem.shell import redis_cluster

    ports = [port, *(p for p in redis_cluster.pick_ports(6) if p != port)][:6]
    try:
        nodes = redis_cluster.start_cluster(state_dir / "redis-cluster", ports=ports)
    except redis_cluster.ClusterError as e:
        raise ServiceError(str(e)) from e
    return {
        "mode": "cluster",
        "url": nodes.url,
        "pids": [n.pid for n in nodes.nodes],
        "label": "Redis Cluster, 3 masters and 3 replicas",
    }


def _start_broker(state_dir: Path, port: int, kind: str, nodes: int) -> dict[str, Any]:
    kind = devservices.choose_broker(kind)
    if kind == "tansu":
        if nodes != 1:
            raise ServiceError("Tansu runs one node only: use --broker kafka for --brokers 3")
        service = devservices.start_broker(port, state_dir)
        return {
            "kind": "tansu",
            "version": devservices.TANSU_VERSION,
            "bootstrap": f"127.0.0.1:{port}",
            "nodes": 1,
            "pids": [service.pid],
            "label": f"Tansu {devservices.TANSU_VERSION}",
        }
    ports = [port, *(devservices.free_port() for _ in range(nodes - 1))]
    cluster = devservices.start_kafka_nodes(state_dir / "kafka", nodes, ports)
    return {
        "kind": "kafka",
        "version": cluster.version,
        "bootstrap": cluster.bootstrap,
        "nodes": nodes,
        "pids": [n.pid for n in cluster.nodes],
        "label": f"Apache Kafka {cluster.version}, {nodes} node{'s' if nodes > 1 else ''}",
    }


def status(settings: Settings) -> list[ServiceStatus]:
    """Whether each service answers, and what tandem started."""
    (khost, kport), (rhost, rport) = _addresses(settings)
    started = _load(settings.state_dir)
    return [
        ServiceStatus(
            "broker",
            f"{khost}:{kport}",
            devservices.kafka_answers(f"{khost}:{kport}"),
            started.get("broker"),
        ),
        ServiceStatus(
            "redis",
            f"{rhost}:{rport}",
            devservices.redis_answers(rhost, rport),
            started.get("redis"),
        ),
    ]


def status_document(settings: Settings) -> dict[str, Any]:
    """``tandem dev status --json``: the broker's kind, version, bootstrap and node count, and
    Redis's mode and URL (``kind`` and ``mode`` are ``external`` for services tandem did not
    start)."""
    broker, redis = status(settings)
    b, r = broker.started or {}, redis.started or {}
    return {
        "broker": {
            "kind": b.get("kind", "external"),
            "version": b.get("version"),
            "bootstrap": b.get("bootstrap", settings.kafka),
            "nodes": b.get("nodes"),
            "up": broker.answering,
        },
        "redis": {
            "mode": r.get("mode", "external"),
            "url": r.get("url", settings.redis_url_redacted()),
            "up": redis.answering,
        },
    }


def down(settings: Settings) -> list[str]:
    """Stop only the services tandem started; returns what was stopped."""
    started = _load(settings.state_dir)
    for name, service in started.items():
        for pid in service["pids"]:
            devservices.stop(pid)
        log.info("stopped %s (pids %s)", name, service["pids"])
    _save(settings.state_dir, {})
    return sorted(started)
