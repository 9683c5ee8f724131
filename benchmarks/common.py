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
def services(settings: Settings, *, kafka: bool = True) -> Iterator[Settings]:
    """The configured services, or throwaway embedded ones when those do not answer."""
    url = urlsplit(settings.redis_url.get_secret_value())
    started: list[int] = []
    changes: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        if not devservices.redis_answers(url.hostname or "127.0.0.1", url.port or 6379):
            redis = devservices.start_redis(devservices.free_port(), Path(tmp))
            started.append(redis.pid)
            changes["redis_url"] = SecretStr(f"redis://127.0.0.1:{redis.port}/0")
        if kafka and not devservices.kafka_answers(settings.kafka):
            broker = devservices.start_broker(devservices.free_port(), Path(tmp))
            started.append(broker.pid)
            changes["kafka"] = f"127.0.0.1:{broker.port}"
        effective = settings.model_copy(update=changes) if changes else settings
        if kafka:
            ensure_base_topics(effective)
        try:
            yield effective
        finally:
            for pid in started:
                devservices.stop(pid)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of a results file."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    path.write_text(text)
