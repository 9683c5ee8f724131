"""`tandem demo` runs the whole system end to end (its own broker and Redis) and says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tandem", "demo", "--users", "400", "--items", "300"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.split("\nsummary\n", 1)[1]
    assert "u2i live version" in summary
    assert "500 (202)" in summary
    assert "answer changed after session events     yes" in summary
    assert "rollback                                HTTP 200" in summary
    assert "(identical)" in summary
    assert "request latency, server" in summary
