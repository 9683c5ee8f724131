"""``python -m benchmarks.api_profile``: where a recommendation's CPU goes in the API process.

Seeds the stores as ``python -m benchmarks api`` does (with its LightGBM model), starts ``tandem
serve``, offers ``--rate`` requests/s for ``--seconds`` while py-spy samples the server process
and prints the functions holding the most samples, inclusive (with what they call) and self.
Sampled with ``--gil``: the thread holding the GIL, that is Python's CPU (C code that releases
the GIL is not in them). Needs py-spy (dev extra) and ptrace rights over the child (root).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import aiohttp
import click

from benchmarks.api_bench import (
    CLIENT_HEADERS,
    SETTLE_S,
    _quiet,
    _seed,
    _start,
    _step,
    tiny_model,
)
from benchmarks.common import services
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def _where(frame: str) -> str:
    """``function (module file)`` without the line, so a function's lines add up."""
    found = FRAME.match(frame)
    if found is None:
        return frame
    return f"{found['function']} ({Path(found['file']).name})"


def summarize(collapsed: str, top: int) -> str:
    """The ``top`` functions by inclusive and by self samples of py-spy's raw (collapsed)
    output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_where(f) for f in stack.split(";") if not f.startswith("process ")]
        total += count
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    rows = [f"{total} samples", "", "inclusive %  function"]
    rows += [f"{100 * n / total:10.1f}  {name}" for name, n in inclusive.most_common(top)]
    rows += ["", "self %      function"]
    rows += [f"{100 * n / total:10.1f}  {name}" for name, n in own.most_common(top)]
    return "\n".join(rows)


async def _load(url: str, rate: int, seconds: float, users: int, pid: int) -> None:
    async with aiohttp.ClientSession(headers=CLIENT_HEADERS) as session:
        step = await _step(session, url, rate, seconds, users, pid)
    print(
        f"offered {rate} req/s: p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms, "
        f"{1e6 * step.cpu_s / step.sent:.0f} µs CPU per request, {step.errors} errors"
    )


@click.command()
@click.option("--rate", default=200, show_default=True, type=click.IntRange(10, 5000))
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(2, 300))
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(100, 10**6))
@click.option("--top", default=40, show_default=True, type=click.IntRange(5, 500))
def main(rate: int, seconds: float, users: int, top: int) -> None:
    """Profile ``tandem serve`` under load."""
    with services(Settings.load()) as started:
        settings = started.model_copy(update={"key_prefix": "prof" + uuid.uuid4().hex[:6]})
        asyncio.run(_seed(settings, users, tiny_model()))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _, urls = _start(settings, procs, only="tandem-1")
            pid = procs[0].pid
            asyncio.run(_load(urls["tandem-1"], rate, 3, users, pid))  # warm up and compile
            asyncio.run(wait_for(partial(_quiet, pid), SETTLE_S, "the server to settle"))
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "profile.txt"
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        "250",
                        "--nonblocking",
                        "--gil",
                        "--duration",
                        str(int(seconds)),
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(1)
                asyncio.run(_load(urls["tandem-1"], rate, seconds - 1, users, pid))
                spy.wait(30)
                print(summarize(out.read_text(), top))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(20)


if __name__ == "__main__":
    main()
