"""``python -m benchmarks batch``: the batch stage on a large synthetic set, stage by stage."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from benchmarks.common import machine
from tandem.batch import engine
from tandem.batch.pipeline import Options, StageTiming, run
from tandem.batch.saved import PARTS
from tandem.batch.synth import SynthSpec, write


@dataclass(frozen=True)
class DaskRow:
    """The same run on a LocalCluster: wall time, the driver's and each worker's peak memory."""

    workers: int
    memory_limit: str
    seconds: float
    driver_peak_mb: float
    worker_peak_mb: list[float]
    tasks: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class BatchBenchResult:
    """Timings of one full run and the baseline read measured beside it."""

    spec: SynthSpec
    events: int
    synth_s: float
    read_s: float
    stages: list[StageTiming]
    metrics: dict[str, float]
    dask: DaskRow | None = None
    # the set the Dask row ran on, when larger than the single-process one (``spec``)
    dask_spec: SynthSpec | None = None
    dask_events: int = 0

    def markdown(self) -> str:
        """The RESULTS.md section."""
        total = sum(s.seconds for s in self.stages)
        peak = max(s.peak_mb for s in self.stages)
        rows = [
            "## Batch stage (`python -m benchmarks batch`)",
            "",
            f"Machine: {machine()}. {self.spec.users:,} users, {self.spec.items:,} items, "
            f"{self.events:,} events over {self.spec.days} days (generated in "
            f"{self.synth_s:.0f} s, not counted). Baseline: reading the interactions with "
            f"pandas.read_parquet, {self.read_s:.1f} s, in the same run.",
            "",
            "| stage | seconds | × baseline read | peak RSS MB (process, so far) |",
            "|---|---|---|---|",
        ]
        rows.extend(
            f"| {s.name} | {s.seconds:.1f} | {s.seconds / self.read_s:.1f} | {s.peak_mb:,.0f} |"
            for s in self.stages
        )
        rows += [
            "",
            f"Total **{total:.0f} s** (target < 600 s), peak **{peak / 1024:.2f} GB** "
            "(target < 6 GB).",
            "",
            "Evaluation on this set: "
            + ", ".join(
                f"{k} {v:.3f}"
                for k, v in self.metrics.items()
                if k
                in (
                    "candidates_recall@200",
                    "ranker_ndcg@10",
                    "popularity_ndcg@10",
                    "reranker_lift",
                )
            ),
        ]
        if self.dask is not None:
            rows += ["", *self.dask_rows(total, peak)]
        return "\n".join(rows)

    def dask_rows(self, total: float, peak: float) -> list[str]:
        """Single process beside the Dask run (u2i written part by part by the workers)."""
        assert self.dask is not None
        d = self.dask
        workers = ", ".join(f"{mb:,.0f}" for mb in d.worker_peak_mb)
        ndcg = "ranker_ndcg@10"
        single, large = self.spec, self.dask_spec or self.spec
        size = "users / items / events"
        return [
            f"### Single process and Dask ({d.workers} workers, `memory_limit={d.memory_limit}` "
            "each)",
            "",
            f"| run | {size} | seconds | peak RSS MB, driver | peak RSS MB per worker | tasks "
            f"| {ndcg} |",
            "|---|---|---|---|---|---|---|",
            f"| single process | {_size(single, self.events)} | {total:.0f} | {peak:,.0f} | - | - "
            f"| {self.metrics.get(ndcg, 0.0):.4f} |",
            f"| Dask LocalCluster | {_size(large, self.dask_events or self.events)} "
            f"| {d.seconds:.0f} | {d.driver_peak_mb:,.0f} | {workers} | {d.tasks} "
            f"| {d.metrics.get(ndcg, 0.0):.4f} |",
        ]


def _size(spec: SynthSpec, events: int) -> str:
    return f"{spec.users:,} / {spec.items:,} / {events:,}"


def bench(
    users: int,
    items: int,
    events_per_user: float,
    dask_workers: int = 0,
    memory_limit: str = "1.5GB",
    single: tuple[int, int] | None = None,
) -> BatchBenchResult:
    """Generate the set, time a plain read of it, then run the batch stage (and, with
    ``dask_workers``, again on a LocalCluster of that many workers, in a fresh process).

    ``single``: ``(users, items)`` of a smaller set for the single-process run, the Dask one
    running on the full size (the single process's peak only grows with the size, so a worker
    limit below the smaller run's peak is below the full size's too)."""
    spec = SynthSpec(users=users, items=items, days=28, events_per_user=events_per_user, seed=1)
    small = spec if single is None else replace(spec, users=single[0], items=single[1])
    with tempfile.TemporaryDirectory(prefix="tandem-batch-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        events, _ = write(small, folder / "single")
        synth_s = time.perf_counter() - started
        started = time.perf_counter()
        pd.read_parquet(folder / "single" / "interactions.parquet")
        read_s = time.perf_counter() - started
        output = run(folder / "single", quiet=False)
        timings, metrics = output.timings, output.metrics
        del output  # the lists: not kept while the Dask run measures its own memory
        dask, large, large_events = None, None, 0
        if dask_workers and small != spec:
            large, (large_events, _) = spec, write(spec, folder / "large")
            shutil.rmtree(folder / "single")
        if dask_workers:
            dask = _on_dask(folder / ("large" if large else "single"), dask_workers, memory_limit)
    return BatchBenchResult(
        small, events, synth_s, read_s, timings, metrics, dask, large, large_events
    )


def _on_dask(folder: Path, workers: int, memory_limit: str) -> DaskRow:
    """The Dask run in a child process, so its driver's peak is its own."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                *(sys.executable, "-m", "benchmarks.batch_bench", str(folder)),
                *(str(workers), memory_limit, out.name),
            ],
            check=True,
        )
        return DaskRow(**json.loads(Path(out.name).read_text()))


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dask_run(folder: Path, workers: int, memory_limit: str) -> DaskRow:
    """``tandem batch run --dask-workers N`` on ``folder``, u2i written part by part."""
    with (
        engine.dask_cluster(None, workers, memory_limit) as (on_dask, dashboard),
        engine.using(on_dask),
        tempfile.TemporaryDirectory(prefix="tandem-parts-") as parts,
    ):
        print(f"dask dashboard: {dashboard}", flush=True)
        started = time.perf_counter()
        output = run(folder, Options(parts_dir=Path(parts) / PARTS), quiet=False)
        seconds = time.perf_counter() - started
        peaks = on_dask.client.run(_worker_peak_mb)
    return DaskRow(
        workers,
        memory_limit,
        seconds,
        _worker_peak_mb(),
        [peaks[address] for address in sorted(peaks)],
        on_dask.tasks,
        {k: v for k, v in output.metrics.items() if k.startswith(("ranker_", "candidates_"))},
    )


if __name__ == "__main__":
    row = dask_run(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    Path(sys.argv[4]).write_text(json.dumps(row.__dict__))
