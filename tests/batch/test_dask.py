"""The batch stage on a small Dask LocalCluster (chunked steps, the ranker trained with
lightgbm.dask) gives the single-process metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
    ran = next(line for line in done.stdout.splitlines() if line.startswith("dask: "))
    assert "ran on 2 worker(s)" in ran, ran  # the chunks did run on both workers
    assert ran.endswith("1 ranker(s) trained with lightgbm.dask"), ran
    printed = {
        line.split()[0]: float(line.split()[1])
        for line in done.stdout.splitlines()
        if line.startswith(("ranker_", "candidates_", "popularity_", "itemknn_", "ease_"))
    }
    alone = run(folder, Options(final_lists=False), quiet=True)
    assert len(printed) >= 20
    for name, value in printed.items():
        expected = alone.metrics[name]
        assert abs(value - expected) <= TOLERANCE * max(expected, 1e-9), (name, value, expected)


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
