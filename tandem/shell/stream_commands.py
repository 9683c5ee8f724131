"""``tandem worker`` and ``tandem events produce``."""

from __future__ import annotations

from pathlib import Path

import click

from tandem.shell.clictx import (
    metrics_options,
    preflight,
    run_until_signal,
    serve_metrics,
    settings_of,
)


@click.command()
@click.option(
    "--app-id",
    default="tandem-streams",
    show_default=True,
    help="Consumer group and changelog prefix; workers with one id share the work.",
)
@click.option(
    "--session-gap-s",
    default=1800,
    show_default=True,
    type=click.IntRange(60, 86400),
    help="Inactivity that ends a session (also the Redis TTL of a session).",
)
@click.option(
    "--changelog-batch-bytes",
    default=None,
    type=click.IntRange(1, 1 << 20),
    help="Producer batch size of the changelog [1 on Tansu, 65536 on Apache Kafka] "
    "(streams/app.py explains the trade-off).",
)
@click.option(
    "--redis-outage-s",
    default=60,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="How long Redis writes are retried before the worker gives up and exits non-zero.",
)
@metrics_options
@click.pass_context
def worker(
    ctx: click.Context,
    app_id: str,
    session_gap_s: int,
    changelog_batch_bytes: int | None,
    redis_outage_s: int,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Run the stream worker: sessions, trending and cache invalidation into Redis."""
    from tandem.contracts.session import SessionPolicy
    from tandem.streams.app import WorkerOptions
    from tandem.streams.runner import run_until

    options = WorkerOptions(
        app_id=app_id,
        session=SessionPolicy(gap_ms=session_gap_s * 1000),
        changelog_batch_bytes=changelog_batch_bytes,
        redis_outage_s=redis_outage_s,
    )
    from tandem.streams.metrics import REGISTRY

    preflight(settings_of(ctx))
    serve_metrics(metrics_port, metrics_host or settings_of(ctx).metrics_host, REGISTRY)

    settings = settings_of(ctx)
    run_until_signal(lambda stop: run_until(settings, options, stop))


@click.group()
def events() -> None:
    """Send interaction events to tandem.events."""


@events.command("produce")
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON lines of events, one per line, as POST /v1/events takes them.",
)
@click.option(
    "--synthetic",
    type=click.IntRange(1, 100_000_000),
    default=None,
    help="Send this many generated events instead.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 1_000_000),
    default=None,
    help="Events per second (default: as fast as the broker takes them).",
)
@click.option(
    "--users",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 10**8),
    help="Distinct users of the --synthetic events.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the --synthetic events (deterministic)."
)
@click.pass_context
def events_produce(
    ctx: click.Context,
    source: Path | None,
    synthetic: int | None,
    rate: float | None,
    users: int,
    seed: int,
) -> None:
    """Send events (validated first) with the idempotent producer, keyed by user."""
    from tqdm import tqdm

    from tandem.streams.produce import produce, read_events, synthetic_events

    if (source is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --from FILE and --synthetic N")
    # A file is validated whole before anything is sent: a bad line sends nothing.
    stream = (
        list(read_events(source))
        if source is not None
        else synthetic_events(synthetic or 0, users=users, seed=seed)
    )
    total = len(stream) if isinstance(stream, list) else synthetic
    with tqdm(total=total, desc="events", unit="ev", disable=None) as bar:
        sent = produce(settings_of(ctx), stream, rate, on_event=lambda _: bar.update())
    click.echo(f"{sent} events acknowledged by the broker")
