"""What every ``tandem`` subcommand shares: the settings the root command read, and running an
asyncio job until SIGINT or SIGTERM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import asyncio

    from prometheus_client import CollectorRegistry

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


def metrics_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--metrics-port`` and ``--metrics-host`` of a long-running process."""
    command = click.option(
        "--metrics-host",
        default=None,
        help="Address the metrics listen on [env TANDEM_METRICS_HOST; 127.0.0.1] "
        "(0.0.0.0 in a container, so Prometheus can scrape it).",
    )(command)
    return click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        default=None,
        help="Serve this process's Prometheus metrics at http://HOST:PORT/metrics.",
    )(command)


def serve_metrics(
    port: int | None, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> None:
    """Expose ``registry`` (the component's own; the default registry when None) over HTTP when a
    port is given. A port already taken is an error that says so."""
    if port is None:
        return
    from prometheus_client import REGISTRY, start_http_server

    from tandem.contracts.exceptions import ConfigError

    try:
        start_http_server(port, addr=host, registry=registry or REGISTRY)
    except OSError as e:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({e.strerror}): choose another --metrics-port "
            "or --metrics-host"
        ) from e


def settings_of(ctx: click.Context) -> Settings:
    """The settings built by the root command."""
    settings: Settings = ctx.find_root().obj
    return settings


TEARDOWN_S = 15.0  # how long a process may take to exit once its job has ended


def run_until_signal(job: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``job(stop)`` on a new event loop; SIGINT or SIGTERM sets ``stop``.

    Once the job has ended (stopped, or failed), the process has :data:`TEARDOWN_S` to exit:
    a client library's task that ignores cancellation or a thread that never returns (a crashed
    Faust app's can) would otherwise keep it alive and idle. Past that, it dumps every thread's
    stack to stderr and exits with code 1."""
    import asyncio
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await job(stop)
        finally:
            exit_if_stuck(TEARDOWN_S)

    asyncio.run(main())


def exit_if_stuck(after_s: float) -> None:
    """End the process with code 1 if it is still alive ``after_s`` from now (a daemon timer:
    it never keeps the process alive itself)."""
    import faulthandler
    import logging
    import os
    import sys
    import threading

    def stuck() -> None:
        logging.getLogger(__name__).error(
            "the process did not exit within %g s of its job's end (a task or thread ignored "
            "the stop): exiting with code 1; the threads' stacks follow",
            after_s,
        )
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(after_s, stuck)
    timer.daemon = True
    timer.start()


PREFLIGHT_S = 5.0


def preflight(settings: Settings) -> None:
    """Before a long-running process starts: Redis and Kafka must answer within
    :data:`PREFLIGHT_S` each, or the command fails in one line (a misconfigured or missing
    service is reported at once; outages after the start are ridden out as each process's
    ``--redis-outage-s`` says)."""
    import asyncio

    from tandem.contracts.kafka import admin, existing_topics
    from tandem.store.connect import connect

    async def ping() -> None:
        redis = connect(settings, timeout_s=PREFLIGHT_S)
        try:
            await asyncio.wait_for(redis.ping(), PREFLIGHT_S)
        finally:
            await redis.aclose()

    asyncio.run(ping())
    existing_topics(admin(settings), PREFLIGHT_S)
