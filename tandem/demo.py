"""``tandem demo``: the whole system end to end on the embedded broker and a private Redis.

This is an entry point, like ``tandem serve``: it is the one place besides the CLI that starts
every package, so it imports them inside :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from tandem import devservices
from tandem.kafka import ensure_base_topics
from tandem.settings import Settings

log = logging.getLogger(__name__)

STORES = ("u2i", "i2i", "popular")
TOKEN = "demo-" + uuid.uuid4().hex[:12]


@dataclass
class Summary:
    """What the demo shows at the end."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: object) -> None:
        """Record one line and say it now."""
        self.lines.append((what, str(value)))
        click.echo(f"  {what}: {value}")

    def render(self) -> str:
        """The summary table."""
        width = max(len(w) for w, _ in self.lines)
        return "\n".join(f"  {w:<{width}}  {v}" for w, v in self.lines)


def step(title: str) -> None:
    """Announce a step."""
    click.secho(f"\n▶ {title}", bold=True)


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.95, 0.99)]
    return "p50 {:.1f} ms, p95 {:.1f} ms, p99 {:.1f} ms".format(*pick)


@contextlib.contextmanager
def services(state_dir: Path, keep: bool) -> Any:
    """A private broker and Redis on free ports (left running with ``keep``)."""
    broker = devservices.start_broker(devservices.free_port(), state_dir)
    redis = devservices.start_redis(devservices.free_port(), state_dir)
    settings = Settings.load(
        kafka=f"127.0.0.1:{broker.port}",
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        key_prefix="demo",
        admin_token=TOKEN,
    )
    ensure_base_topics(settings)
    try:
        yield settings
    finally:
        if keep:
            click.echo(
                f"\nleft running: broker pid {broker.pid} on {settings.kafka}, redis pid "
                f"{redis.pid} on 127.0.0.1:{redis.port}; stop them with: "
                f"kill {broker.pid} {redis.pid}"
            )
        else:
            devservices.stop(broker.pid)
            devservices.stop(redis.pid)


def run(users: int, items: int, keep: bool) -> None:
    """Run the demo (see the module docstring)."""
    started = time.perf_counter()
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as tmp:
        step("starting the embedded broker (Tansu) and a private redis-server")
        with services(Path(tmp), keep) as settings:
            click.echo(f"  broker {settings.kafka}, redis {settings.redis_url_redacted()}")
            asyncio.run(_main(settings, Path(tmp), users, items, summary))
    summary.add("demo wall time", f"{time.perf_counter() - started:.0f} s")
    click.secho("\nsummary", bold=True)
    click.echo(summary.render())


async def _main(settings: Settings, folder: Path, users: int, items: int, summary: Summary) -> None:
    from batch.cli import publish_output
    from batch.pipeline import run as run_batch
    from batch.synth import SynthSpec, write

    step(f"generating synthetic data: {users:,} users, {items:,} items")
    events, _ = write(SynthSpec(users=users, items=items), folder / "data")
    summary.add("interactions", f"{events:,}")
    step("batch stage: candidates, ranker, re-ranker, evaluation")
    output = await asyncio.to_thread(run_batch, folder / "data", quiet=False)
    click.echo(output.table())
    for name in ("candidates_recall@200", "ranker_ndcg@10", "popularity_ndcg@10", "reranker_lift"):
        summary.add(f"offline {name}", f"{output.metrics[name]:.3f}")
    step("publishing u2i (with its re-ranker), i2i and popular as versions")
    for line in await asyncio.to_thread(publish_output, settings, output, list(STORES)):
        click.echo("  " + line)
    async with _system(settings) as system:
        await system.walkthrough(output, summary)


@contextlib.asynccontextmanager
async def _system(settings: Settings) -> AsyncIterator[Any]:
    from aiohttp import web

    from api.app import create_app
    from consumers.materializer import Materializer, MaterializerOptions
    from streams.app import WorkerOptions
    from streams.runner import running
    from tandem.demo_walk import Walkthrough

    stop = asyncio.Event()
    materializer = asyncio.create_task(
        Materializer(settings, MaterializerOptions(group="demo-materializer")).run(stop)
    )
    port = devservices.free_port()
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        step(f"starting the materializer, the stream worker and the API (http://127.0.0.1:{port})")
        async with running(settings, WorkerOptions(app_id="demo-streams")):
            yield Walkthrough(settings, f"http://127.0.0.1:{port}", TOKEN)
    finally:
        stop.set()
        await materializer
        await runner.cleanup()
