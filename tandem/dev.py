"""``tandem dev``: start, report and stop the embedded broker and Redis it started."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from tandem import devservices
from tandem.kafka import ensure_base_topics
from tandem.settings import Settings

log = logging.getLogger(__name__)

STATE_FILE = "dev.json"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service as ``tandem dev status`` reports it."""

    name: str
    address: str
    answering: bool
    pid: int | None

    def describe(self) -> str:
        """One line for people."""
        owner = f"started by tandem, pid {self.pid}" if self.pid else "not started by tandem"
        state = "up" if self.answering else "DOWN"
        return f"{self.name:<7} {self.address:<22} {state:<5} ({owner})"


def _addresses(settings: Settings) -> tuple[tuple[str, int], tuple[str, int]]:
    host, _, port = settings.kafka.split(",")[0].rpartition(":")
    url = urlsplit(settings.redis_url.get_secret_value())
    return (host or "127.0.0.1", int(port)), (url.hostname or "127.0.0.1", url.port or 6379)


def _load(state_dir: Path) -> dict[str, dict[str, int]]:
    path = state_dir / STATE_FILE
    if not path.exists():
        return {}
    recorded: dict[str, dict[str, int]] = orjson.loads(path.read_bytes())
    return {name: s for name, s in recorded.items() if devservices.pid_alive(s["pid"])}


def _save(state_dir: Path, started: dict[str, dict[str, int]]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_bytes(orjson.dumps(started, option=orjson.OPT_INDENT_2))


def up(settings: Settings) -> list[ServiceStatus]:
    """Start whatever of broker and Redis does not answer yet; harmless when run twice."""
    (khost, kport), (rhost, rport) = _addresses(settings)
    started = _load(settings.state_dir)
    if not devservices.redis_answers(rhost, rport):
        service = devservices.start_redis(rport, settings.state_dir)
        started["redis"] = {"pid": service.pid, "port": rport}
    if not devservices.kafka_answers(f"{khost}:{kport}"):
        service = devservices.start_broker(kport, settings.state_dir)
        started["broker"] = {"pid": service.pid, "port": kport}
    _save(settings.state_dir, started)
    ensure_base_topics(settings)
    return status(settings)


def status(settings: Settings) -> list[ServiceStatus]:
    """Whether each service answers, and whether tandem started it."""
    (khost, kport), (rhost, rport) = _addresses(settings)
    started = _load(settings.state_dir)
    return [
        ServiceStatus(
            "broker",
            f"{khost}:{kport}",
            devservices.kafka_answers(f"{khost}:{kport}"),
            started.get("broker", {}).get("pid"),
        ),
        ServiceStatus(
            "redis",
            f"{rhost}:{rport}",
            devservices.redis_answers(rhost, rport),
            started.get("redis", {}).get("pid"),
        ),
    ]


def down(settings: Settings) -> list[str]:
    """Stop only the services tandem started; returns what was stopped."""
    started = _load(settings.state_dir)
    for name, service in started.items():
        devservices.stop(service["pid"])
        log.info("stopped %s (pid %d)", name, service["pid"])
    _save(settings.state_dir, {})
    return sorted(started)
