"""`tandem events produce`: validated events to tandem.events, keyed by user."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from tandem.contracts.settings import Settings
from tandem.shell.processes import environment

pytestmark = pytest.mark.integration


def produce(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem", "events", "produce", *args],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_events_produce_from_file_and_synthetic(settings: Settings, tmp_path: Path) -> None:
    user = "cli" + uuid.uuid4().hex[:6]
    good = tmp_path / "events.jsonl"
    good.write_bytes(
        b"\n".join(
            orjson.dumps({"user_id": user, "item_id": f"i{n}", "event_type": "view"})
            for n in range(5)
        )
    )
    result = produce(settings, "--from", str(good))
    assert result.returncode == 0, result.stderr
    assert "5 events acknowledged" in result.stdout
    result = produce(settings, "--synthetic", "200", "--rate", "2000")
    assert result.returncode == 0, result.stderr
    assert "200 events acknowledged" in result.stdout


def test_a_bad_line_stops_with_its_number_and_field(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"user_id": "u1", "item_id": "i1", "event_type": "view"}\n'
        '{"user_id": "u1", "item_id": "i 2", "event_type": "view"}\n'
    )
    result = produce(settings, "--from", str(bad))
    assert result.returncode == 1
    assert "bad.jsonl:2" in result.stderr
    assert "item_id" in result.stderr
    assert "acknowledged" not in result.stdout  # nothing of the file was sent
