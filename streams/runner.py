"""Running the worker from code (``tandem worker``, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from confluent_kafka.cimpl import NewTopic
from faust.contrib.asgi import faust_app_running

from tandem.contracts.kafka import admin, create_topics, ensure_base_topics
from tandem.contracts.settings import Settings
from tandem.streams.app import StreamWorker, WorkerOptions, changelog_batching, changelog_topic
from tandem.streams.exceptions import WorkerCrashed

log = logging.getLogger(__name__)

CRASH_CHECK_S = 0.5
STOP_TIMEOUT_S = 8.0  # a worker told to stop is gone within 10 s


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
        async with faust_app_running(worker.app, stop_timeout=STOP_TIMEOUT_S):
            await worker.refresh_categories()
            yield worker
    finally:
        await worker.close()


async def run_until(settings: Settings, options: WorkerOptions, stop: asyncio.Event) -> None:
    """Run the worker until ``stop`` is set; raise :class:`WorkerCrashed` if the Faust app
    stops by itself (a process that cannot do its job exits, it never stays alive and idle)."""
    async with running(settings, options) as worker:
        log.info("stream worker %s running", options.app_id)
        app = worker.app
        stopping = asyncio.ensure_future(stop.wait())
        # What start-up made (modules, Faust's services) lives as long as the process: out of
        # the collector's sight, a full collection scans only what came later (it scanned
        # ~100k objects, a 50-70 ms pause in the middle of the stream, every half minute).
        gc.collect()
        gc.freeze()
        try:
            while not stopping.done():
                await asyncio.wait([stopping], timeout=CRASH_CHECK_S)
                if app.crashed or app.should_stop:
                    reason = app.crash_reason or "it stopped"
                    raise WorkerCrashed(f"the stream worker stopped by itself: {reason!r}")
        finally:
            gc.unfreeze()
            stopping.cancel()
