"""Plain or JSON log lines (TANDEM_LOG_FORMAT), and -q / -v setting the level."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tandem.contracts.logs import JsonFormatter, configure
from tandem.shell import devservices
from tandem.shell.cli import main


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_request_id_extras_and_traceback(root_logging: None) -> None:
    stream = io.StringIO()
    configure(logging.INFO, "json", stream)
    log = logging.getLogger("tandem.test")
    log.info("answered %s", "u1", extra={"request_id": "r-123", "took_ms": 4.5})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    log.debug("not at INFO")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "answered u1"
    assert first["level"] == "INFO"
    assert first["logger"] == "tandem.test"
    assert first["request_id"] == "r-123"
    assert first["took_ms"] == 4.5
    assert first["ts"].endswith("Z")
    assert first["pid"] == os.getpid()
    assert "exc_info" not in first
    assert "RuntimeError: boom" in second["exc_info"]
    assert "request_id" not in second


def test_a_record_without_extras_is_plain() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    body = orjson.loads(JsonFormatter().format(record))
    assert set(body) == {"ts", "level", "logger", "message", "pid"}
    assert body["message"] == "a b"


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        ([], logging.WARNING),
        (["-q"], logging.ERROR),
        (["-v"], logging.INFO),
        (["-vv"], logging.DEBUG),
    ],
)
def test_quiet_and_verbose_set_the_level(flags: list[str], level: int, root_logging: None) -> None:
    result = CliRunner().invoke(main, [*flags, "dev", "--help"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == level


def test_the_cli_logs_json_lines_and_refuses_an_unknown_format(tmp_path: Path) -> None:
    port = devservices.free_port()  # nothing listens there
    env = {
        **os.environ,
        "TANDEM_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "TANDEM_STATE_DIR": str(tmp_path),
        "TANDEM_LOG_FORMAT": "json",
    }
    args = [sys.executable, "-m", "tandem", "-v", "versions", "list", "u2i"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    *logged, last = result.stderr.strip().splitlines()
    assert last.startswith("error: Redis at")  # the one line for the operator stays plain
    records = [orjson.loads(line) for line in logged]  # every log line is JSON
    assert any("Traceback" in r.get("exc_info", "") for r in records)
    env["TANDEM_LOG_FORMAT"] = "xml"
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "TANDEM_LOG_FORMAT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
