"""`tandem --help` starts fast because the shell imports the heavy packages only in the commands
that use them: importing the CLI must not load any of them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pandas", "lightgbm", "faust", "aiohttp", "confluent_kafka", "redis", "numpy")


def test_the_cli_imports_no_heavy_package() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tandem.shell.cli"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert imported & set(HEAVY) == set()
    assert "tandem.shell.cli" in result.stderr
