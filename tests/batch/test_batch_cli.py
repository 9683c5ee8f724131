"""``tandem batch run --out`` kept and published later, and the CLI's one-line failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tandem.batch.synth import SynthSpec, write
from tandem.consumers.replay import replay
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.shell.processes import environment

# plumbing, not quality: the smallest set the pipeline trains on in a second
SMALL = SynthSpec(users=120, items=80, days=10, events_per_user=20, seed=5)


def tandem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def nowhere() -> dict[str, str]:
    """An environment whose broker and Redis do not exist."""
    return {
        **os.environ,
        "TANDEM_KAFKA": "127.0.0.1:1",
        "TANDEM_REDIS_URL": "redis://127.0.0.1:1/0",
    }


def test_publish_checks_the_broker_before_training(tmp_path: Path) -> None:
    write(SMALL, tmp_path)
    started = time.monotonic()
    done = tandem(nowhere(), "batch", "run", "--data", str(tmp_path), "--publish")
    assert time.monotonic() - started < 20  # interpreter start-up included; the probe: 5 s
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Kafka" in lines[0]
    assert "ranker_ndcg@10" not in done.stdout  # nothing was trained


@pytest.mark.parametrize("content", [None, "user_id,item_id,ts\n"])
def test_a_data_folder_without_interactions_is_one_line(
    tmp_path: Path, content: str | None
) -> None:
    if content is not None:
        (tmp_path / "interactions.csv").write_text(content)
    done = tandem(nowhere(), "batch", "evaluate", "--data", str(tmp_path))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "interactions" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.integration
async def test_kept_output_is_published_later(settings: Settings, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write(SMALL, data)
    env = environment(settings)
    done = tandem(env, "batch", "run", "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {"u2i.parquet", "i2i.parquet", "popular.parquet"}
    published = tandem(env, "publish", "--from-batch", str(out))
    assert published.returncode == 0, published.stderr
    versions = {
        line.split()[1]: int(line.split()[2][1:].rstrip(":"))
        for line in published.stdout.splitlines()
        if line.startswith("published")
    }
    assert set(versions) == {"u2i", "i2i", "popular"}, published.stdout
    info = await replay(settings, "u2i", versions["u2i"], cutover=True)
    assert info.state is State.LIVE, info.reasons
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    assert info.metadata["metrics"]["ranker_ndcg@10"] == metrics["ranker_ndcg@10"]
    assert info.metadata["reranker"] == "lightgbm"
