"""What every benchmark shares: services, percentiles, machine facts and RESULTS.md sections."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/PID/task/*/children``), for counting the CPU of
    a server that forks workers."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in task.read_text().split())
    return found


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (their own counters in
    ``/proc/PID/stat``); a process that is gone is an error, not zero."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS_PER_S


def machine_busy() -> tuple[float, float]:
    """``(busy CPU seconds, wall seconds × cores)`` of the whole machine so far, from
    ``/proc/stat``: the difference of two readings says how busy it was in between."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / CLOCK_TICKS_PER_S, sum(fields) / CLOCK_TICKS_PER_S


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: list[float]) -> Spread:
        """The spread of ``values`` (NaN when there are none)."""
        if not values:
            return Spread(float("nan"), float("nan"), float("nan"))
        return Spread(statistics.median(values), min(values), max(values))

    @property
    def relative(self) -> float:
        """The range as a fraction of the median (0 for a single value)."""
        return (self.high - self.low) / self.median if self.median else float("nan")

    def cell(self, fmt: str = ".1f") -> str:
        """``median (low–high)`` for a table."""
        return f"{self.median:{fmt}} ({self.low:{fmt}}–{self.high:{fmt}})"
