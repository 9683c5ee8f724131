"""Running the API: ``tandem serve`` (uvloop, SO_REUSEPORT workers, draining shutdown)."""

from __future__ import annotations

import logging
import multiprocessing

import uvloop
from aiohttp import web

from tandem.api.app import create_app
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0


def serve_one(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    """One API process; SIGTERM stops accepting, drains requests in flight, then exits."""
    uvloop.install()
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        reuse_port=reuse_port,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
        print=None,
    )


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """``workers`` processes sharing the port (the kernel spreads connections)."""
    log.info("serving on http://%s:%d with %d worker(s)", host, port, workers)
    if workers == 1:
        serve_one(settings, host, port, reuse_port=False)
        return
    procs = [
        multiprocessing.get_context("spawn").Process(
            target=serve_one, args=(settings, host, port, True), daemon=False
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
