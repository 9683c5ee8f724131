"""The shared CLI helpers: serving a component's Prometheus metrics, and a process that exits
once its job has ended, even when a library leaves something behind that will not stop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request

import pytest

from tandem.consumers.metrics import REGISTRY
from tandem.contracts.exceptions import ConfigError
from tandem.shell import devservices
from tandem.shell.clictx import serve_metrics


def test_serve_metrics_exposes_the_components_registry() -> None:
    port = devservices.free_port()
    serve_metrics(port, "127.0.0.1", REGISTRY)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "tandem_materializer_records_applied_total" in text
    assert "tandem_worker_" not in text
    serve_metrics(None)  # no port: nothing to serve, no error
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        serve_metrics(port, "127.0.0.1", REGISTRY)  # taken by the first


STUCK = textwrap.dedent(
    """
    import asyncio, threading
    from tandem.shell import clictx

    clictx.TEARDOWN_S = 1.0

    async def job(stop):
        release = threading.Event()
        threading.Thread(target=release.wait, name="never-returns").start()  # not a daemon

        async def deaf():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # ignores cancellation, as a crashed library's task can

        asyncio.ensure_future(deaf())
        await asyncio.sleep(0)
        raise RuntimeError("the job failed")

    clictx.run_until_signal(job)
    """
)


def test_a_process_whose_job_ended_exits_even_if_something_will_not_stop() -> None:
    """A task deaf to cancellation kept ``asyncio.run`` from returning, and a thread that never
    returns would keep the interpreter from exiting: the process exits non-zero all the same,
    with every thread's stack in its log, not alive and idle."""
    done = subprocess.run(
        [sys.executable, "-c", STUCK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "did not exit within 1 s of its job's end" in done.stderr
    assert "Thread 0x" in done.stderr  # the stacks say where it was stuck
