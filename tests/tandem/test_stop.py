"""Every long-running process stops within 10 s of SIGTERM, and says it stopped cleanly (exit 0):
a supervisor's stop or a rolling deploy never waits for a kill."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tandem.contracts.schemas import Event
from tandem.contracts.settings import Settings
from tandem.shell import devservices, processes
from tandem.store.keys import Keys
from tests.helpers import wait_for
from tests.streams.test_worker import send

pytestmark = pytest.mark.integration

STOP_WITHIN_S = 10.0


async def stopped_in(component: processes.Component) -> tuple[int, float]:
    """SIGTERM ``component``; its exit code and the seconds it took (fails past the bound)."""
    start = time.monotonic()
    component.proc.terminate()
    try:
        code = await asyncio.to_thread(component.proc.wait, STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        component.proc.kill()
        component.proc.wait(10)
        pytest.fail(
            f"`tandem {component.name}` was still running {STOP_WITHIN_S:g} s after SIGTERM"
        )
    return code, time.monotonic() - start


async def test_the_stream_worker_stops_within_10_s_under_load(
    settings: Settings, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    app_id = "stop" + uuid.uuid4().hex[:6]
    worker = processes.start("worker", ["worker", "--app-id", app_id], settings, tmp_path)
    user, t0 = "stop" + uuid.uuid4().hex[:6], time.time_ns() // 1_000_000
    with processes.running([worker]):
        send(settings, Event(user, "i0", "view", t0, f"{user}-0"))

        async def applied() -> bytes | None:
            worker.check()
            value = await redis.get(keys.session(user))
            return value if isinstance(value, bytes) else None

        await wait_for(applied, 90, "the worker to apply a first event")
        # Keep it busy while it stops: events are still arriving when SIGTERM comes.
        send(
            settings, *(Event(user, f"i{n}", "view", t0 + n, f"{user}-{n}") for n in range(1, 2001))
        )
        code, took = await stopped_in(worker)
    assert code == 0, worker.log_path.read_text(errors="replace")[-1500:]
    assert took < STOP_WITHIN_S


async def test_the_api_stops_within_10_s(settings: Settings, tmp_path: Path) -> None:
    port = devservices.free_port()
    server = processes.start("serve", ["serve", "--port", str(port)], settings, tmp_path)
    with processes.running([server]):

        async def answering() -> bool:
            server.check()
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{port}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(answering, 60, "the API to answer")
        code, took = await stopped_in(server)
    assert code == 0, server.log_path.read_text(errors="replace")[-1500:]
    assert took < STOP_WITHIN_S
