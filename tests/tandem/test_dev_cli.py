"""`tandem dev up && tandem dev status && tandem dev down`, twice, on ports of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tandem.shell import devservices
from tests.conftest import broker_kind

pytestmark = pytest.mark.integration


def tandem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_up_status_down_twice(tmp_path: Path) -> None:
    kafka_port, redis_port = devservices.free_port(), devservices.free_port()
    env = {
        **os.environ,
        "TANDEM_KAFKA": f"127.0.0.1:{kafka_port}",
        "TANDEM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TANDEM_STATE_DIR": str(tmp_path / "state"),
    }
    kind = broker_kind()
    for _ in range(2):
        up = tandem(env, "dev", "up", "--broker", kind)
        assert up.returncode == 0, up.stderr
        assert "started by tandem" in up.stdout
        again = tandem(env, "dev", "up", "--broker", kind)
        assert again.returncode == 0, again.stderr
        status = tandem(env, "dev", "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.count(" up ") == 2
        document = orjson.loads(tandem(env, "dev", "status", "--json").stdout)
        assert document["broker"]["kind"] == kind
        assert document["broker"]["nodes"] == 1
        assert document["broker"]["bootstrap"] == f"127.0.0.1:{kafka_port}"
        if kind == "kafka":
            assert document["broker"]["version"].startswith("4.")
        assert document["redis"] == {
            "mode": "standalone",
            "url": f"redis://127.0.0.1:{redis_port}/0",
            "up": True,
        }
        assert devservices.redis_answers("127.0.0.1", redis_port)
        down = tandem(env, "dev", "down")
        assert down.returncode == 0, down.stderr
        assert "broker" in down.stdout
        assert "redis" in down.stdout
        assert not devservices.redis_answers("127.0.0.1", redis_port)
        after = tandem(env, "dev", "status")
        assert after.returncode == 1
        assert "DOWN" in after.stdout


def test_redis_missing_says_how_to_get_it(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": str(tmp_path),
        "TANDEM_KAFKA": f"127.0.0.1:{devservices.free_port()}",
        "TANDEM_REDIS_URL": f"redis://127.0.0.1:{devservices.free_port()}/0",
        "TANDEM_STATE_DIR": str(tmp_path / "state"),
    }
    result = tandem(env, "dev", "up")
    assert result.returncode == 1
    assert "apt-get install redis-server" in result.stderr


def test_invalid_setting_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "TANDEM_PARTITIONS": "many"}
    result = tandem(env, "dev", "status")
    assert result.returncode == 2
    assert "TANDEM_PARTITIONS" in result.stderr


def test_kafka_without_java_says_what_to_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with redis-server only: no java, no mvn
    bin_dir.mkdir()
    redis_server = shutil.which("redis-server")
    assert redis_server is not None
    (bin_dir / "redis-server").symlink_to(redis_server)
    env = {
        **{k: v for k, v in os.environ.items() if k != "JAVA_HOME"},
        "PATH": str(bin_dir),
        "TANDEM_KAFKA": f"127.0.0.1:{devservices.free_port()}",
        "TANDEM_REDIS_URL": f"redis://127.0.0.1:{devservices.free_port()}/0",
        "TANDEM_STATE_DIR": str(tmp_path / "state"),
    }
    try:
        result = tandem(env, "dev", "up", "--broker", "kafka")
        assert result.returncode == 1
        assert "Apache Kafka needs Java 17+" in result.stderr
        assert "--broker tansu" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        tandem(env, "dev", "down")
