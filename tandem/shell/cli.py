"""The ``tandem`` command line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from tandem.contracts.exceptions import ConfigError, TandemError
from tandem.shell.batch_commands import batch, data, publish
from tandem.shell.clictx import broker_option, brokers_option, settings_of
from tandem.shell.item_commands import items
from tandem.shell.store_commands import materialize, replay, versions
from tandem.shell.stream_commands import events, worker

log = logging.getLogger(__name__)

VERBOSE = "tandem.verbose"


class TandemGroup(click.Group):
    """Turns operational errors into one line saying what failed and what to do, and a non-zero
    exit code; ``-v`` adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            _fail(ctx, f"error: {e}", 2, e)
        except TandemError as e:
            _fail(ctx, f"error: {e}", 1, e)
        except Exception as e:  # a client library's error: explained when it is one we know
            explained = _explain(ctx, e)
            if explained is None:
                raise
            _fail(ctx, f"error: {explained}", 1, e)


def _fail(ctx: click.Context, message: str, code: int, error: BaseException) -> None:
    if ctx.meta.get(VERBOSE, 0) > 0:
        log.error("%s", message, exc_info=error)
    click.echo(message, err=True)
    sys.exit(code)


def _explain(ctx: click.Context, error: Exception) -> str | None:
    """One line for the errors of the Redis and Kafka clients: what failed and what to do."""
    module = type(error).__module__
    settings = ctx.find_root().obj
    reason = str(error).rstrip(".")
    if module.startswith("redis"):
        where = settings.redis_url_redacted() if settings is not None else "the configured Redis"
        return (
            f"Redis at {where} failed: {reason}. Is it running? Start one with "
            "`tandem dev up`, or point TANDEM_REDIS_URL (--redis-url) at yours."
        )
    if module.startswith(("confluent_kafka", "cimpl")):
        where = settings.kafka if settings is not None else "the configured brokers"
        return (
            f"Kafka at {where} failed: {reason}. Is it running? Start one with "
            "`tandem dev up`, or point TANDEM_KAFKA (--kafka) at yours."
        )
    return None


@click.group(cls=TandemGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kafka", help="Kafka bootstrap servers [env TANDEM_KAFKA; 127.0.0.1:9092]")
@click.option("--redis-url", help="Redis URL [env TANDEM_REDIS_URL; redis://127.0.0.1:6379/0]")
@click.option("--prefix", "key_prefix", help="Redis key prefix [env TANDEM_KEY_PREFIX; tandem]")
@click.option(
    "-v", "--verbose", count=True, help="More log output: -v info and tracebacks, -vv debug."
)
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.version_option(package_name="tandem")
@click.pass_context
def main(
    ctx: click.Context,
    kafka: str | None,
    redis_url: str | None,
    key_prefix: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """tandem: two-stage recommendation serving.

    Batch predictions are published as versions on Kafka, materialized into Redis, validated
    and flipped live atomically; the online API re-ranks them with fresh session context.
    """
    ctx.meta[VERBOSE] = verbose
    level = logging.ERROR if quiet else logging.WARNING - 10 * min(verbose, 2)
    try:
        from tandem.contracts.settings import Settings

        ctx.obj = Settings.load(kafka=kafka, redis_url=redis_url, key_prefix=key_prefix)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    from tandem.contracts.logs import configure

    configure(level, ctx.obj.log_format)
    # librdkafka reports every failed connection attempt; the error that ends the command says
    # what matters, so its own lines show with -v only.
    logging.getLogger("librdkafka").setLevel(level if verbose else logging.CRITICAL)


@main.group("dev")
def dev_group() -> None:
    """Development services: Apache Kafka or Tansu, and redis-server or a Redis Cluster."""


@dev_group.command("up")
@broker_option
@brokers_option
@click.option(
    "--redis-cluster",
    is_flag=True,
    help="A six-node Redis Cluster (3 masters, 3 replicas) instead of one redis-server.",
)
@click.pass_context
def dev_up(ctx: click.Context, broker: str, brokers: int, redis_cluster: bool) -> None:
    """Start the broker and Redis unless they already answer; create tandem's topics."""
    from tandem.shell import dev

    for service in dev.up(settings_of(ctx), broker, brokers, redis_cluster):
        click.echo(service.describe())


@dev_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.pass_context
def dev_status(ctx: click.Context, as_json: bool) -> None:
    """Report whether the broker and Redis answer. Exit code 1 if either is down."""
    from tandem.shell import dev

    services = dev.status(settings_of(ctx))
    if as_json:
        import orjson

        document = dev.status_document(settings_of(ctx))
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for service in services:
            click.echo(service.describe())
    if not all(s.answering for s in services):
        sys.exit(1)


@dev_group.command("down")
@click.pass_context
def dev_down(ctx: click.Context) -> None:
    """Stop what `tandem dev up` started (nothing else)."""
    from tandem.shell import dev

    stopped = dev.down(settings_of(ctx))
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing (tandem started none)"))


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all)."
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="TCP port of the API and its /metrics.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="API processes sharing the port (SO_REUSEPORT).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Run the recommendation API (GET /openapi.json on it describes its endpoints)."""
    from tandem.api.server import serve as run  # the entry point is the one place that starts api/

    run(settings_of(ctx), host, port, workers)


@main.command()
@click.option(
    "--users",
    default=2000,
    show_default=True,
    type=click.IntRange(50, 10**6),
    help="Users in the synthetic data set.",
)
@click.option(
    "--items",
    default=1000,
    show_default=True,
    type=click.IntRange(50, 10**6),
    help="Items in the synthetic data set.",
)
@broker_option
@brokers_option
@click.option("--redis-cluster", is_flag=True, help="A six-node Redis Cluster instead of one.")
@click.option("--keep", is_flag=True, help="Leave the broker and Redis running at the end.")
@click.pass_context
def demo(
    ctx: click.Context,
    users: int,
    items: int,
    broker: str,
    brokers: int,
    redis_cluster: bool,
    keep: bool,
) -> None:
    """The whole system end to end on a private broker and Redis, as an operator runs it."""
    from tandem.shell.demo import Setup, run  # an entry point: it starts every package

    setup = Setup(users, items, broker, brokers, redis_cluster, keep)
    run(setup, settings_of(ctx).state_dir)


from tandem.shell.experiment_commands import (  # noqa: E402 - adds to versions
    experiments,
    guard,
    simulate,
)

for _command in (
    batch,
    data,
    events,
    experiments,
    guard,
    items,
    materialize,
    publish,
    replay,
    simulate,
    versions,
    worker,
):
    main.add_command(_command)
