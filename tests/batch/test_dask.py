"""The batch stage's chunked steps on a small Dask LocalCluster give the single-process metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from distributed import get_task_stream

from tandem.batch import engine
from tandem.batch.data import load
from tandem.batch.pipeline import Options, run
from tandem.batch.synth import SynthSpec, write

SMALL = SynthSpec(users=300, items=200, days=10, events_per_user=30, seed=3)
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dask")
    write(SMALL, path)
    return path


def test_two_dask_workers_give_the_single_process_metrics(folder: Path) -> None:
    options = Options(final_lists=False)
    alone = run(folder, options, quiet=True)
    with engine.dask_cluster(None, 2) as (on_dask, dashboard), engine.using(on_dask):
        assert dashboard.startswith("http")
        workers = on_dask.client.scheduler_info()["workers"]
        assert len(workers) == 2
        with get_task_stream(on_dask.client) as stream:
            spread = run(folder, options, quiet=True)
        # the chunks did run on the cluster, on both workers
        ran = {task["key"].split("-")[0] for task in stream.data}
        assert {"_partial_gram", "_top_chunk"} <= ran, ran
        assert len({task["worker"] for task in stream.data}) == 2
    for name, value in alone.metrics.items():
        other = spread.metrics[name]
        assert abs(other - value) <= TOLERANCE * max(abs(value), 1e-9), (name, value, other)


def test_cli_prints_the_dashboard_and_the_same_table(folder: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tandem", "batch", "evaluate"),
            *("--data", str(folder), "--dask-workers", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "dask dashboard: http" in done.stdout
    alone = run(folder, Options(final_lists=False), quiet=True)
    row = next(line for line in done.stdout.splitlines() if line.startswith("ranker_ndcg@10 "))
    printed = float(row.split()[1])
    assert (
        abs(printed - alone.metrics["ranker_ndcg@10"])
        <= TOLERANCE * alone.metrics["ranker_ndcg@10"]
    )


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_partitioned_input_reads_as_the_single_file(
    folder: Path, tmp_path: Path, suffix: str
) -> None:
    whole = load(folder / "interactions.parquet", folder / "items.parquet")
    frame = pd.read_parquet(folder / "interactions.parquet")
    parts = tmp_path / "interactions"
    parts.mkdir()
    for n, start in enumerate(range(0, len(frame), len(frame) // 3 + 1)):
        chunk = frame.iloc[start : start + len(frame) // 3 + 1]
        if suffix == "parquet":
            chunk.to_parquet(parts / f"part-{n}.parquet", index=False)
        else:
            chunk.to_csv(parts / f"part-{n}.csv", index=False)
    split_up = load(parts, folder / "items.parquet")
    pd.testing.assert_frame_equal(split_up.events, whole.events)
    assert split_up.users.equals(whole.users)
