"""``tandem materialize``, ``tandem versions …`` and ``tandem replay``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import orjson
from confluent_kafka import Producer
from tqdm import tqdm

from consumers.materializer import Materializer, MaterializerOptions
from consumers.replay import replay as run_replay
from store.connect import connect
from store.keys import Keys
from store.lifecycle import Lifecycle
from store.registry import State, VersionInfo
from tandem import topics
from tandem.announce import announce
from tandem.clictx import metrics_port_option, run_until_signal, serve_metrics, settings_of
from tandem.ids import check_version
from tandem.kafka import admin, producer_config
from tandem.settings import Settings

T = TypeVar("T")


def _with_lifecycle(settings: Settings, job: Callable[[Lifecycle], Awaitable[T]]) -> T:
    async def run() -> T:
        redis = connect(settings)
        try:
            return await job(Lifecycle(redis, Keys(settings.key_prefix)))
        finally:
            await redis.aclose()

    return asyncio.run(run())


@click.command()
@click.option(
    "--until-idle",
    "until_idle_s",
    type=click.FloatRange(0.5, 3600),
    default=None,
    help="Exit after this many seconds without records once nothing is pending.",
)
@click.option(
    "--batch-size",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Most records taken from Kafka per Redis write.",
)
@click.option(
    "--group",
    default="tandem-materializer",
    show_default=True,
    help="Consumer group; run several processes in one group to share partitions.",
)
@click.option("--no-cutover", is_flag=True, help="Validate versions but never promote them.")
@metrics_port_option
@click.pass_context
def materialize(
    ctx: click.Context,
    until_idle_s: float | None,
    batch_size: int,
    group: str,
    no_cutover: bool,
    metrics_port: int | None,
) -> None:
    """Materialize version topics into Redis, validate them and cut over."""
    options = MaterializerOptions(
        group=group, batch_size=batch_size, until_idle_s=until_idle_s, cutover=not no_cutover
    )
    serve_metrics(metrics_port)

    settings = settings_of(ctx)
    run_until_signal(lambda stop: Materializer(settings, options).run(stop))


@click.group()
def versions() -> None:
    """List, inspect, roll back and retire store versions."""


def _line(info: VersionInfo, live: int | None, backup: int | None) -> str:
    mark = "*" if info.version == live else ("b" if info.version == backup else " ")
    reasons = ("  " + "; ".join(info.reasons)) if info.reasons else ""
    return (
        f"{mark} v{info.version}  {info.state.value:<11} {info.count:>9}  "
        f"{info.checksum or '-':<16}{reasons}"
    )


@versions.command("list")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.pass_context
def versions_list(ctx: click.Context, store: str, as_json: bool) -> None:
    """The versions of STORE (* live, b backup)."""
    settings = settings_of(ctx)
    settings.policy(store)

    async def job(lifecycle: Lifecycle) -> tuple[list[VersionInfo], int | None, int | None]:
        return (
            await lifecycle.registry.list(store),
            await lifecycle.live(store),
            await lifecycle.backup(store),
        )

    found, live, backup = _with_lifecycle(settings, job)
    if as_json:
        body = {
            "store": store,
            "live": live,
            "backup": backup,
            "versions": [info.to_dict() for info in found],
        }
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"  {'version':<19} {'state':<11} {'records':>9}  checksum")
    for info in found:
        click.echo(_line(info, live, backup))
    if not found:
        click.echo(f"(no versions of {store} yet)")


@versions.command("show")
@click.argument("store")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def versions_show(ctx: click.Context, store: str, version: str, as_json: bool) -> None:
    """Everything recorded of one version of STORE."""
    settings = settings_of(ctx)
    settings.policy(store)
    number = check_version(version.lstrip("v"))
    info = _with_lifecycle(settings, lambda lc: lc.registry.get(store, number))
    if info is None:
        click.echo(f"error: {store} v{number} is not in the registry", err=True)
        sys.exit(1)
    text = orjson.dumps(info.to_dict(), option=orjson.OPT_INDENT_2).decode()
    click.echo(text if as_json else text.replace('"', ""))


@versions.command("rollback")
@click.argument("store")
@click.pass_context
def versions_rollback(ctx: click.Context, store: str) -> None:
    """Flip STORE back to its backup version, atomically (if it is still materialized)."""
    settings = settings_of(ctx)
    settings.policy(store)
    rolled_back, live = _with_lifecycle(settings, lambda lc: lc.rollback(store))
    producer = Producer(producer_config(settings, bulk=False))
    announce(producer, store, live, State.LIVE.value, rolled_back_from=rolled_back)
    producer.flush(10)
    click.echo(f"{store}: rolled back from v{rolled_back} to v{live}")


@versions.command("retire")
@click.argument("store")
@click.option(
    "--keep",
    type=click.IntRange(0, 100),
    default=None,
    help="Versions kept besides the live one [the store's keep_versions].",
)
@click.option("--delete-topics", is_flag=True, help="Also delete the retired versions' topics.")
@click.pass_context
def versions_retire(ctx: click.Context, store: str, keep: int | None, delete_topics: bool) -> None:
    """Delete old versions of STORE from Redis (and, if asked, from Kafka)."""
    settings = settings_of(ctx)
    kept = settings.policy(store).keep_versions if keep is None else keep
    retired = _with_lifecycle(settings, lambda lc: lc.retire(store, kept))
    if delete_topics and retired:
        names = [topics.version_topic(store, v) for v in retired]
        for future in admin(settings).delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(30)
    click.echo(f"{store}: retired {', '.join(f'v{v}' for v in retired) or 'nothing'}")


@click.command()
@click.argument("store")
@click.option("--version", "version", required=True, help="The version to rebuild.")
@click.option("--cutover", is_flag=True, help="Make it live once it is verified.")
@click.pass_context
def replay(ctx: click.Context, store: str, version: str, cutover: bool) -> None:
    """Rebuild a version of STORE into Redis from its topic (after Redis lost it, say)."""
    settings = settings_of(ctx)
    number = check_version(version.lstrip("v"))
    with tqdm(desc=f"replay {store} v{number}", unit="rec", disable=None) as bar:
        info = asyncio.run(
            run_replay(settings, store, number, cutover=cutover, on_progress=bar.update)
        )
    click.echo(
        f"{store} v{number}: {info.state.value}, {info.count} records, checksum {info.checksum}"
    )
    if info.reasons:
        click.echo("reasons: " + "; ".join(info.reasons))
    if info.state is State.REJECTED:
        sys.exit(1)
