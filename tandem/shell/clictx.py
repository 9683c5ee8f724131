"""What every ``tandem`` subcommand shares: the settings the root command read, and running an
asyncio job until SIGINT or SIGTERM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import asyncio

    from tandem.contracts.settings import Settings

broker_option = click.option(
    "--broker",
    type=click.Choice(["auto", "kafka", "tansu"]),
    default="auto",
    show_default=True,
    help="The broker to start: Apache Kafka (fetched with Maven; needs Java 17+), the embedded "
    "Tansu, or auto (Kafka where Java is there).",
)
brokers_option = click.option(
    "--brokers",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Kafka nodes (KRaft, each broker and controller); 3 gives topics with three replicas "
    "and min.insync.replicas=2.",
)

metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics at this port (on TANDEM_METRICS_HOST, default 127.0.0.1).",
)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose this process's Prometheus metrics when a port is given (``TANDEM_METRICS_HOST``
    chooses the address: 0.0.0.0 in a container)."""
    if port is not None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host)


def settings_of(ctx: click.Context) -> Settings:
    """The settings built by the root command."""
    settings: Settings = ctx.find_root().obj
    return settings


def run_until_signal(job: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``job(stop)`` on a new event loop; SIGINT or SIGTERM sets ``stop``."""
    import asyncio
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await job(stop)

    asyncio.run(main())
