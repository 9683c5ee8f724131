"""What every benchmark shares: services, percentiles, machine facts and RESULTS.md sections."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from tandem.contracts.kafka import ensure_base_topics
from tandem.contracts.settings import Settings
from tandem.shell import devservices


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples`` by nearest rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine() -> str:
    """One line describing where a benchmark ran."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


@contextlib.contextmanager
def services(settings: Settings, *, kafka: bool = True, broker: str = "auto") -> Iterator[Settings]:
    """The configured services when both answer; otherwise private ones on free ports (a
    ``broker`` of that kind: Apache Kafka where Java is there, or Tansu)."""
    url = urlsplit(settings.redis_url.get_secret_value())
    redis_up = devservices.redis_answers(url.hostname or "127.0.0.1", url.port or 6379)
    if redis_up and (not kafka or devservices.kafka_answers(settings.kafka)):
        if kafka:
            ensure_base_topics(settings)
        yield settings
        return
    with (
        tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp,
        devservices.private_services(Path(tmp), broker=broker, kafka=kafka) as started,
    ):
        changes: dict[str, object] = {"redis_url": SecretStr(started.redis_url)}
        if kafka:
            changes["kafka"] = started.kafka
        yield settings.model_copy(update=changes)


def broker_label(settings: Settings) -> str:
    """The broker a benchmark ran on, for RESULTS.md."""
    from tandem.contracts.kafka import is_tansu

    return "Tansu (embedded)" if is_tansu(settings) else "Apache Kafka"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of a results file."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    path.write_text(text)
