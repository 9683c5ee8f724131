"""The compose file is valid (when the docker CLI with compose is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker CLI with compose not installed")
def test_compose_config_is_valid() -> None:
    env = {**os.environ, "TANDEM_ADMIN_TOKEN": "example"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_process_is_wired_through_the_environment() -> None:
    text = COMPOSE.read_text()
    for service in ("kafka:", "redis:", "api:", "materializer:", "worker:", "batch:"):
        assert service in text
    for variable in ("TANDEM_KAFKA", "TANDEM_REDIS_URL", "TANDEM_ADMIN_TOKEN"):
        assert variable in text
