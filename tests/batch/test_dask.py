"""The batch stage on a small Dask LocalCluster (chunked steps, the ranker trained with
lightgbm.dask) gives the single-process metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from tandem.batch import engine, ranking
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


def _chunk_sum(chunk: np.ndarray, offset: float) -> float:
    return float(chunk.sum()) + offset


def test_chunks_reach_the_workers_a_few_at_a_time_and_the_ranker_trains_on_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with engine.dask_cluster(None, 2, "1GB") as (on, _), engine.using(on):
        slots = engine.IN_FLIGHT_PER_WORKER * 2
        held: list[int] = []

        def chunks() -> Iterator[np.ndarray]:
            for n in range(12):
                held.append(len(on.client.who_has()))  # keys the cluster holds right now
                yield np.full(1000, n, dtype=np.float64)

        sums = on.map(_chunk_sum, chunks(), offset=0.5)
        assert sums == [1000.0 * n + 0.5 for n in range(12)]  # in the chunks' order
        # each chunk in flight: its data and its task; plus the shared input
        assert max(held) <= 2 * slots + 1, held
        assert on.tasks == 12 and len(on.workers) == 2

        monkeypatch.setattr(ranking, "MIN_BLOCK_ROWS", 1_000)
        rng = np.random.default_rng(0)
        x = rng.random((6_000, len(ranking.RANKER_FEATURES)), dtype=np.float32)
        target = (x[:, 0] + 0.3 * rng.random(6_000) > 0.8).astype(np.float32)
        weight = np.ones(6_000, dtype=np.float32)
        params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 50}
        model = ranking._train_on_dask(on, params, x, target, weight)
        assert on.tasks == 14  # one block per worker
        assert model.num_trees() == ranking.ROUNDS
        alone = lgb.train(params, lgb.Dataset(x, label=target), num_boost_round=ranking.ROUNDS)
        on_dask, local = model.predict(x), alone.predict(x)
        assert np.corrcoef(on_dask, local)[0, 1] > 0.98  # data-parallel trees, nearly the same
