"""The compose file is valid (where docker compose or docker-compose is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def _compose() -> list[str] | None:
    """The compose command this machine has: the docker plugin, or docker-compose."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


@pytest.mark.skipif(_compose() is None, reason="neither docker compose nor docker-compose here")
def test_compose_config_is_valid() -> None:
    command = _compose()
    assert command is not None
    env = {**os.environ, "TANDEM_ADMIN_TOKEN": "example"}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
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
