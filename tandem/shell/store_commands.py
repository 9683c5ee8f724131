"""``tandem materialize``, ``tandem versions …`` and ``tandem replay``."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click
import orjson

from tandem.contracts.ids import check_version
from tandem.shell.clictx import (
    metrics_options,
    preflight,
    run_until_signal,
    serve_metrics,
    settings_of,
)

if TYPE_CHECKING:
    from tandem.contracts.settings import Settings
    from tandem.store.admin import VersionAdmin
    from tandem.store.registry import VersionInfo

T = TypeVar("T")


def _with_admin(settings: Settings, job: Callable[[VersionAdmin], Awaitable[T]]) -> T:
    """Run ``job`` with the version-admin service; lifecycle records are flushed at the end."""
    import asyncio

    from tandem.contracts.kafka import make_producer
    from tandem.store.admin import VersionAdmin
    from tandem.store.connect import connect

    async def run() -> T:
        redis = connect(settings)
        producer = make_producer(settings, bulk=False)
        try:
            return await job(VersionAdmin(settings, redis, producer))
        finally:
            await redis.aclose()
            producer.flush(10)

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
@click.option(
    "--redis-outage-s",
    default=60,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="How long Redis writes are retried before the materializer gives up and exits non-zero.",
)
@metrics_options
@click.pass_context
def materialize(
    ctx: click.Context,
    until_idle_s: float | None,
    batch_size: int,
    group: str,
    no_cutover: bool,
    redis_outage_s: int,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Materialize version topics into Redis, validate them and cut over."""
    import asyncio

    from tandem.consumers.materializer import Materializer, MaterializerOptions
    from tandem.shell.progress import MaterializeProgress

    options = MaterializerOptions(
        group=group,
        batch_size=batch_size,
        until_idle_s=until_idle_s,
        cutover=not no_cutover,
        redis_outage_s=redis_outage_s,
    )
    from tandem.consumers.metrics import REGISTRY

    preflight(settings_of(ctx))
    serve_metrics(metrics_port, metrics_host or settings_of(ctx).metrics_host, REGISTRY)

    settings = settings_of(ctx)

    async def job(stop: asyncio.Event) -> None:
        with MaterializeProgress(list(settings.stores)) as progress:
            watching = asyncio.ensure_future(progress.watch(stop))
            try:
                await Materializer(settings, options).run(stop)
            finally:
                watching.cancel()

    run_until_signal(job)


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
    listing = _with_admin(settings_of(ctx), lambda admin: admin.versions(store))
    found, live, backup = listing.versions, listing.live, listing.backup
    if as_json:
        click.echo(orjson.dumps(listing.to_dict(), option=orjson.OPT_INDENT_2).decode())
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
    number = check_version(version.lstrip("v"))
    info = _with_admin(settings_of(ctx), lambda admin: admin.show(store, number))
    text = orjson.dumps(info.to_dict(), option=orjson.OPT_INDENT_2).decode()
    click.echo(text if as_json else text.replace('"', ""))


@versions.command("lookup")
@click.argument("store")
@click.argument("entity")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def versions_lookup(ctx: click.Context, store: str, entity: str, as_json: bool) -> None:
    """What the live version of STORE serves for ENTITY (a user, an item or a segment)."""
    from tandem.contracts.ids import check_id

    check_id(entity, "entity")
    served = _with_admin(settings_of(ctx), lambda admin: admin.lookup(store, entity))
    if as_json:
        body = {
            "store": store,
            "version": None if served.version is None else str(served.version),
            "entity_id": entity,
            "items": [
                {"item_id": i, "score": s}
                for i, s in zip(served.item_ids, served.scores, strict=True)
            ],
        }
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    if served.version is None:
        click.echo(f"{store} has no live version")
        return
    click.echo(f"{store} v{served.version}, {entity}: {len(served.item_ids)} items")
    for rank, (item, score) in enumerate(zip(served.item_ids, served.scores, strict=True), 1):
        click.echo(f"{rank:>4}. {item}  {score:.4f}")


@versions.command("rollback")
@click.argument("store")
@click.pass_context
def versions_rollback(ctx: click.Context, store: str) -> None:
    """Flip STORE back to its backup version, atomically (if it is still materialized)."""
    rolled_back, live = _with_admin(settings_of(ctx), lambda admin: admin.rollback(store))
    click.echo(f"{store}: rolled back from v{rolled_back} to v{live}")


@versions.command("abort")
@click.argument("store")
@click.argument("version")
@click.option(
    "--reason",
    default="aborted by the operator",
    show_default=True,
    help="Recorded in the registry and on tandem.versions.",
)
@click.pass_context
def versions_abort(ctx: click.Context, store: str, version: str, reason: str) -> None:
    """Mark a version whose push never finished aborted and delete what Redis holds of it."""
    number = check_version(version.lstrip("v"))
    info = _with_admin(settings_of(ctx), lambda admin: admin.abort(store, number, [reason]))
    click.echo(f"{store} v{info.version}: {info.state.value} ({'; '.join(info.reasons)})")


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
    retired = _with_admin(
        settings_of(ctx),
        lambda admin: admin.retire(store, keep, delete_topics=delete_topics),
    )
    click.echo(f"{store}: retired {', '.join(f'v{v}' for v in retired) or 'nothing'}")


@click.command()
@click.argument("store")
@click.option("--version", "version", required=True, help="The version to rebuild.")
@click.option("--cutover", is_flag=True, help="Make it live once it is verified.")
@click.pass_context
def replay(ctx: click.Context, store: str, version: str, cutover: bool) -> None:
    """Rebuild a version of STORE into Redis from its topic (after Redis lost it, say)."""
    import asyncio

    from tqdm import tqdm

    from tandem.consumers.replay import replay as run_replay
    from tandem.contracts.versions import State

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
