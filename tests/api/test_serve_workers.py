"""`tandem serve --workers 2`: two processes behind one port, metrics for both, and no process
left behind when the parent is stopped or killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from tandem.contracts.settings import Settings
from tandem.shell import devservices, processes
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def start_workers(settings: Settings, tmp_path: Path) -> tuple[processes.Component, str]:
    port = devservices.free_port()
    server = processes.start(
        "serve", ["serve", "--port", str(port), "--workers", "2"], settings, tmp_path
    )
    url = f"http://127.0.0.1:{port}"

    async def two_workers() -> set[int] | None:
        server.check()
        workers = {p for p in children_of(server.proc.pid) if alive(p)}
        if len(workers) < 2:
            return None
        try:
            async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as response:
                return workers if response.status == 200 else None
        except aiohttp.ClientError:
            return None

    await wait_for(two_workers, 60, "two API workers answering")
    return server, url


async def test_metrics_count_every_workers_requests(settings: Settings, tmp_path: Path) -> None:
    server, url = await start_workers(settings, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(40):  # new connections: the kernel spreads them over both workers
                async with aiohttp.ClientSession() as one, one.get(url + "/healthz") as response:
                    assert response.status == 200
            async with http.get(url + "/metrics") as response:
                text = await response.text()
        counts = re.findall(
            r'^tandem_api_request_seconds_count\{outcome="ok",route="/healthz"\} (\S+)$',
            text,
            re.MULTILINE,
        )
        assert counts, text[:2000]
        assert float(counts[0]) >= 40  # both processes' requests, whichever answered /metrics
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_no_worker_outlives_its_parent(
    settings: Settings, tmp_path: Path, sig: signal.Signals
) -> None:
    server, _ = await start_workers(settings, tmp_path)
    workers = {p for p in children_of(server.proc.pid) if alive(p)}
    os.kill(server.proc.pid, sig)
    await asyncio.to_thread(server.proc.wait, 30)

    async def all_gone() -> bool:
        return not any(alive(p) for p in workers)

    await wait_for(all_gone, 20, f"the workers {sorted(workers)} to exit")
