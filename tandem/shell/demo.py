"""``tandem demo``: the whole system end to end, on private services, as an operator runs it.

The materializer, the stream worker and the API run as their own processes, started with the
commands an operator uses; this process is the batch job, the operator and the clients. Every
wait is bounded and waits on something observable. Third-party logs go to files it names.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import click

from tandem.contracts.domain import STORES
from tandem.contracts.settings import Settings
from tandem.shell import devservices, processes
from tandem.shell.demo_steps import Demo, walkthrough
from tandem.shell.story import Story

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What the demo runs on."""

    users: int = 2000
    items: int = 1000
    broker: str = "auto"
    brokers: int = 1
    redis_cluster: bool = False
    keep: bool = False


def run(setup: Setup, state_dir: Path) -> None:
    """Run the demo (see the module docstring)."""
    started = time.perf_counter()
    folder = state_dir / "demo"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _log_to(folder / "demo.log")
    story = Story()
    story.step("starting a private broker and redis-server")
    services_dir = folder / "services"
    with devservices.private_services(
        services_dir,
        broker=setup.broker,
        nodes=setup.brokers,
        redis_cluster=setup.redis_cluster,
        keep=setup.keep,
    ) as services:
        story.say(f"{services.describe()}")
        settings = Settings.load(
            kafka=services.kafka,
            redis_url=services.redis_url,
            key_prefix="demo",
            admin_token="demo-" + uuid.uuid4().hex[:12],
            state_dir=folder,
            replication_factor=services.replication_factor,
        )
        story.add("broker", services.broker_label)
        story.add("redis", "Redis Cluster, 6 nodes" if setup.redis_cluster else "redis-server")
        asyncio.run(_main(settings, folder, setup.users, setup.items, story))
    story.add("demo wall time", f"{time.perf_counter() - started:.0f} s")
    click.secho("\nsummary", bold=True)
    click.echo(story.render())
    click.echo(f"\nlogs of every process: {folder}/*.log")
    if setup.keep:
        click.echo(f"left running: {services.describe()} (their pids: {services_dir})")


def _log_to(path: Path) -> None:
    """Send every log record (tandem's, Kafka's, Faust's) to ``path``, none to the terminal."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


async def _main(settings: Settings, folder: Path, users: int, items: int, story: Story) -> None:
    from tandem.batch.pipeline import run as run_batch
    from tandem.batch.publish import publish_output
    from tandem.batch.synth import SynthSpec, write

    story.step(f"generating synthetic data: {users:,} users, {items:,} items")
    events, _ = write(SynthSpec(users=users, items=items), folder / "data")
    story.add("interactions", f"{events:,}")
    story.step("batch stage: candidates, LightGBM ranker and re-ranker, evaluation")
    output = await asyncio.to_thread(run_batch, folder / "data", quiet=True)
    for name in ("candidates_recall@200", "ranker_ndcg@10", "popularity_ndcg@10"):
        story.say(f"{name:<24} {output.metrics[name]:.3f}")
    story.step("publishing u2i (with its re-ranker), i2i and popular as versions")
    for line in await asyncio.to_thread(publish_output, settings, output, list(STORES)):
        story.say(line.split(" on topic ")[0])
    port = devservices.free_port()
    story.step(f"starting `tandem materialize`, `tandem worker`, `tandem serve --port {port}`")
    components = [
        processes.start("materialize", ["materialize"], settings, folder),
        processes.start("worker", ["worker"], settings, folder),
        processes.start("serve", ["serve", "--port", str(port)], settings, folder),
    ]
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    demo = Demo(settings, f"http://127.0.0.1:{port}", token, story)
    with processes.running(components):
        await walkthrough(demo, output, components)
    for component in components:
        story.add(f"tandem {component.name} exit code", component.proc.returncode)
