"""tandem's own processes started as an operator starts them (``tandem materialize``, ``tandem
worker``, ``tandem serve``), each with its log file; used by the demo and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tandem.contracts.exceptions import ServiceError
from tandem.contracts.settings import Settings

STOP_TIMEOUT_S = 15.0


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child ``tandem`` process these settings."""
    import orjson

    stores = {name: policy.model_dump() for name, policy in settings.stores.items()}
    env = {
        **os.environ,
        "TANDEM_KAFKA": settings.kafka,
        "TANDEM_REDIS_URL": settings.redis_url.get_secret_value(),
        "TANDEM_KEY_PREFIX": settings.key_prefix,
        "TANDEM_STORES": orjson.dumps(stores).decode(),
        "TANDEM_EVENTS_PARTITIONS": str(settings.events_partitions),
        "TANDEM_REPLICATION_FACTOR": str(settings.replication_factor),
        "TANDEM_STATE_DIR": str(settings.state_dir),
        "TANDEM_IMPRESSIONS_SAMPLE": repr(settings.impressions_sample),
        **extra,
    }
    if settings.admin_token is not None:
        env["TANDEM_ADMIN_TOKEN"] = settings.admin_token.get_secret_value()
    return env


@dataclass
class Component:
    """One running ``tandem`` subcommand."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def check(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise ServiceError(
                f"`tandem {self.name}` exited with code {self.proc.returncode}; its log "
                f"{self.log_path} ends with:\n{tail}"
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        return self.proc.returncode


def start(name: str, args: list[str], settings: Settings, log_dir: Path, **env: str) -> Component:
    """Start ``tandem ARGS`` with ``settings``; its output goes to ``log_dir/NAME.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tandem", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment(settings, **env),
        )
    return Component(name, proc, log_path)


@contextlib.contextmanager
def running(components: list[Component]) -> Iterator[list[Component]]:
    """Stop every component on the way out, newest first."""
    try:
        yield components
    finally:
        for component in reversed(components):
            component.stop()
