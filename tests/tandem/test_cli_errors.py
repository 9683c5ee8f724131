"""Everyday mistakes get one line that says what failed and what to do, fast, and no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.shell import devservices
from tests.conftest import Services
from tests.helpers import metric


def tandem(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tandem", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        (
            {"TANDEM_REDIS_URL": "redis://127.0.0.1:{port}/0"},
            ("versions", "list", "u2i"),
            "Redis at redis://127.0.0.1:{port}/0 failed",
        ),
        (
            {"TANDEM_KAFKA": "127.0.0.1:{port}"},
            ("publish", "u2i", "--synthetic", "10"),
            "Kafka did not answer a metadata request within 5 s",
        ),
        ({"TANDEM_REDIS_URL": "http://x"}, ("versions", "list", "u2i"), "TANDEM_REDIS_URL"),
        ({"TANDEM_KAFKA": "localhost"}, ("versions", "list", "u2i"), "TANDEM_KAFKA"),
    ],
)
def test_unreachable_or_misconfigured_services(
    env: dict[str, str], args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    port = str(devservices.free_port())  # nothing listens there
    given = {name: value.replace("{port}", port) for name, value in env.items()}
    result, took_s = tandem({**given, "TANDEM_STATE_DIR": str(tmp_path)}, *args)
    assert result.returncode != 0
    assert took_s < 10
    assert "Traceback" not in result.stderr
    assert re.search(r"^%\d\|", result.stderr, re.MULTILINE) is None, "a raw librdkafka line"
    assert says.replace("{port}", port) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    port = str(devservices.free_port())
    result, _ = tandem(
        {"TANDEM_REDIS_URL": f"redis://127.0.0.1:{port}/0", "TANDEM_STATE_DIR": str(tmp_path)},
        "-v",
        "versions",
        "list",
        "u2i",
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr


@pytest.mark.parametrize("command", ["materialize", "worker", "guard"])
def test_a_long_running_process_reports_a_missing_redis_at_once(
    command: str, tmp_path: Path
) -> None:
    port = str(devservices.free_port())
    env = {"TANDEM_REDIS_URL": f"redis://127.0.0.1:{port}/0", "TANDEM_STATE_DIR": str(tmp_path)}
    result, took_s = tandem(env, command)
    assert result.returncode == 1
    assert took_s < 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: Redis at redis://127.0.0.1:{port}/0 failed")


@pytest.mark.integration
@pytest.mark.parametrize("command", ["materialize", "worker", "guard"])
def test_a_long_running_process_reports_a_missing_broker_at_once(
    command: str, services: Services, tmp_path: Path
) -> None:
    port = str(devservices.free_port())
    env = {
        "TANDEM_REDIS_URL": services.redis_url,  # Redis answers, the broker does not
        "TANDEM_KAFKA": f"127.0.0.1:{port}",
        "TANDEM_STATE_DIR": str(tmp_path),
    }
    result, took_s = tandem(env, command)
    assert result.returncode == 1
    assert took_s < 10
    assert "Kafka did not answer a metadata request within 5 s" in result.stderr
    assert re.search(r"^%\d\|", result.stderr, re.MULTILINE) is None, "a raw librdkafka line"
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.integration
def test_the_guard_exits_when_it_cannot_read_the_counters(
    services: Services, tmp_path: Path
) -> None:
    """A guard that cannot do its job exits 1 (after ``--give-up-s``), never idles alive."""
    own = devservices.start_redis(devservices.free_port(), tmp_path)
    port = devservices.free_port()
    env = {
        **os.environ,
        "TANDEM_REDIS_URL": f"redis://127.0.0.1:{own.port}/0",
        "TANDEM_KAFKA": services.kafka,
        "TANDEM_STATE_DIR": str(tmp_path),
    }
    command = ["guard", "--interval-s", "0.2", "--give-up-s", "2", "--metrics-port", str(port)]
    guard = subprocess.Popen(
        [sys.executable, "-m", "tandem", *command],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while metric(port, "tandem_guard_passes_total", outcome="ok") < 1:
            assert guard.poll() is None, guard.stderr.read() if guard.stderr else ""
            assert time.monotonic() < deadline, "no guard pass succeeded within 30 s"
            time.sleep(0.05)  # polling the metric, bounded by the deadline
        devservices.stop(own.pid)
        _, stderr = guard.communicate(timeout=30)
    finally:
        devservices.stop(own.pid)
        guard.kill()
    assert guard.returncode == 1
    assert "a guard pass failed" in stderr
    assert (
        stderr.strip().splitlines()[-1].startswith(f"error: Redis at redis://127.0.0.1:{own.port}")
    )
