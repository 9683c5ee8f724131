"""Running the worker from code (``tandem worker``, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from confluent_kafka.cimpl import NewTopic
from faust.contrib.asgi import faust_app_running

from tandem.contracts.kafka import admin, create_topics, ensure_base_topics
from tandem.contracts.settings import Settings
from tandem.streams.app import StreamWorker, WorkerOptions, changelog_batching, changelog_topic

log = logging.getLogger(__name__)


def prepare_topics(settings: Settings, options: WorkerOptions) -> None:
    """Pre-create every topic the worker reads or writes, with explicit partitions.

    A broker that auto-creates topics would otherwise make them with its own partition count and
    the changelog would not match the events topic (Faust refuses to start then).
    """
    ensure_base_topics(settings)
    create_topics(
        admin(settings),
        [
            NewTopic(
                changelog_topic(options),
                settings.events_partitions,
                settings.replication_factor,
                config={"cleanup.policy": "compact"},
            )
        ],
    )


@contextlib.asynccontextmanager
async def running(settings: Settings, options: WorkerOptions) -> AsyncIterator[StreamWorker]:
    """The worker, started on the running loop and stopped (after a final flush) on exit."""
    prepare_topics(settings, options)
    options = changelog_batching(settings, options)
    worker = StreamWorker(settings, options)
    try:
        async with faust_app_running(worker.app, stop_timeout=15):
            await worker.refresh_categories()
            yield worker
    finally:
        await worker.close()


async def run_until(settings: Settings, options: WorkerOptions, stop: asyncio.Event) -> None:
    """Run the worker until ``stop`` is set."""
    async with running(settings, options):
        log.info("stream worker %s running", options.app_id)
        await stop.wait()
