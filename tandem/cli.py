"""The ``tandem`` command line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from tandem import dev
from tandem.clictx import settings_of
from tandem.exceptions import ConfigError, TandemError
from tandem.settings import Settings

log = logging.getLogger(__name__)


class TandemGroup(click.Group):
    """Turns tandem errors into one clear line and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except TandemError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=TandemGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kafka", help="Kafka bootstrap servers [env TANDEM_KAFKA; 127.0.0.1:9092]")
@click.option("--redis-url", help="Redis URL [env TANDEM_REDIS_URL; redis://127.0.0.1:6379/0]")
@click.option("--prefix", "key_prefix", help="Redis key prefix [env TANDEM_KEY_PREFIX; tandem]")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="tandem")
@click.pass_context
def main(
    ctx: click.Context,
    kafka: str | None,
    redis_url: str | None,
    key_prefix: str | None,
    verbose: int,
) -> None:
    """tandem: two-stage recommendation serving.

    Batch predictions are published as versions on Kafka, materialized into Redis, validated
    and flipped live atomically; the online API re-ranks them with fresh session context.
    """
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ctx.obj = Settings.load(kafka=kafka, redis_url=redis_url, key_prefix=key_prefix)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


@main.group("dev")
def dev_group() -> None:
    """The embedded development services (Tansu broker and redis-server)."""


@dev_group.command("up")
@click.pass_context
def dev_up(ctx: click.Context) -> None:
    """Start the broker and Redis unless they already answer; create tandem's topics."""
    for service in dev.up(settings_of(ctx)):
        click.echo(service.describe())


@dev_group.command("status")
@click.pass_context
def dev_status(ctx: click.Context) -> None:
    """Report whether the broker and Redis answer. Exit code 1 if either is down."""
    services = dev.status(settings_of(ctx))
    for service in services:
        click.echo(service.describe())
    if not all(s.answering for s in services):
        sys.exit(1)


@dev_group.command("down")
@click.pass_context
def dev_down(ctx: click.Context) -> None:
    """Stop what `tandem dev up` started (nothing else)."""
    stopped = dev.down(settings_of(ctx))
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing (tandem started none)"))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="API processes sharing the port (SO_REUSEPORT).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Run the recommendation API (see /openapi.json for its endpoints)."""
    from api.server import serve as run  # the entry point is the one place that starts api/

    run(settings_of(ctx), host, port, workers)


@main.command()
@click.option("--users", default=2000, show_default=True, type=click.IntRange(50, 10**6))
@click.option("--items", default=1000, show_default=True, type=click.IntRange(50, 10**6))
@click.option("--keep", is_flag=True, help="Leave the broker and Redis running at the end.")
def demo(users: int, items: int, keep: bool) -> None:
    """The whole system end to end on the embedded broker and a private Redis."""
    from tandem.demo import run  # an entry point: it starts every package

    run(users, items, keep)


def _register() -> None:
    from batch.cli import batch, data, publish
    from benchmarks.cli import bench
    from consumers.cli import materialize, replay, versions
    from streams.cli import events, worker

    for command in (batch, bench, data, events, materialize, publish, replay, versions, worker):
        main.add_command(command)


_register()
