"""`tandem demo` runs the whole system end to end as separate processes and says so, briefly.

It checks facts the system guarantees (not timing): every store goes live, events are accepted
after the broker's ack, an event makes the user's cached answer unreachable, rollback and replay
work, and every component stops cleanly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import broker_kind

pytestmark = pytest.mark.integration

DEMO = (sys.executable, "-m", "tandem", "demo", "--users", "400", "--items", "300")


def test_demo_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [*DEMO, "--broker", broker_kind()],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "TANDEM_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert len(output.splitlines()) <= 80, output
    assert "Traceback" not in output
    assert re.search(r"^%\d\|", output, re.MULTILINE) is None, "a raw librdkafka line"
    summary = result.stdout.split("\nsummary\n", 1)[1]
    for store in ("u2i", "i2i", "popular"):
        assert re.search(rf"{store} live version\s+\d+", summary)
    assert re.search(r"events accepted \(202 after broker ack\)\s+500 \(202\)", summary)
    assert re.search(r"answer after session events\s+recomputed \(not cached\)", summary)
    assert re.search(r"rollback\s+HTTP 200", summary)
    assert "(identical)" in summary
    assert re.search(r"request latency at \d+ req/s, server\s+p50", summary)
    for component in ("materialize", "worker", "serve"):
        assert re.search(rf"tandem {component} exit code\s+0$", summary, re.MULTILINE)
    logs = tmp_path / "state" / "demo"
    assert {"materialize.log", "worker.log", "serve.log", "demo.log"} <= {
        p.name for p in logs.iterdir()
    }
