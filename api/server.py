"""Running the API: ``tandem serve`` (uvloop, SO_REUSEPORT workers, draining shutdown)."""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

import uvloop
from aiohttp import web

from tandem.api.app import create_app
from tandem.contracts import logctx
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def serve_one(
    settings: Settings, host: str, port: int, reuse_port: bool, parent: int | None = None
) -> None:
    """One API process; SIGTERM stops accepting, drains requests in flight, then exits. A child
    of ``serve --workers`` also gets SIGTERM when its parent dies, however it dies."""
    if parent is not None:
        _die_with_parent(parent)
    uvloop.install()
    logctx.install()  # every log line of a request carries its X-Request-ID
    app = create_app(settings)
    # What start-up made (~170k objects: the modules of numpy, LightGBM, aiohttp, redis, ...)
    # lives as long as the process. Out of the cyclic collector's sight, a full collection scans
    # only what requests made: measured in-process, collections cost 60 us per request (a full
    # one ~150 ms, a latency spike when it comes) and 1 us after the freeze.
    gc.freeze()
    web.run_app(
        app,
        host=host,
        port=port,
        reuse_port=reuse_port,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
        print=None,
    )


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(1)


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """``workers`` processes sharing the port (the kernel spreads connections). The parent
    supervises them: SIGTERM or SIGINT drains and stops all of them; a child that dies takes the
    others down and the parent exits non-zero, so a supervisor restarts the whole server. Their
    metrics are aggregated (prometheus-client's multiprocess mode): any process's /metrics
    answers for all of them."""
    log.info("serving on http://%s:%d with %d worker(s)", host, port, workers)
    if workers == 1:
        serve_one(settings, host, port, reuse_port=False)
        return
    metrics_dir = settings.state_dir / f"api-metrics-{os.getpid()}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=serve_one, args=(settings, host, port, True, os.getpid()), daemon=False
        )
        for _ in range(workers)
    ]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for proc in procs:
        proc.start()
    try:
        while not stop.wait(0.2):
            if any(not proc.is_alive() for proc in procs):
                log.error("an API worker exited; stopping the others")
                break
    finally:
        failed = not stop.is_set()
        _stop_all(procs)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed:
        sys.exit(1)


def _stop_all(procs: Sequence[BaseProcess]) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join(SHUTDOWN_TIMEOUT_S + 2)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
