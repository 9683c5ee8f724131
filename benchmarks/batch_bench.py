"""``python -m benchmarks batch``: the batch stage on a large synthetic set, stage by stage."""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.common import machine
from tandem.batch.pipeline import StageTiming, run
from tandem.batch.synth import SynthSpec, write


@dataclass(frozen=True)
class BatchBenchResult:
    """Timings of one full run and the baseline read measured beside it."""

    spec: SynthSpec
    events: int
    synth_s: float
    read_s: float
    stages: list[StageTiming]
    metrics: dict[str, float]

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
        return "\n".join(rows)


def bench(users: int, items: int, events_per_user: float) -> BatchBenchResult:
    """Generate the set, time a plain read of it, then run the batch stage."""
    spec = SynthSpec(users=users, items=items, days=28, events_per_user=events_per_user, seed=1)
    with tempfile.TemporaryDirectory(prefix="tandem-batch-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        events, _ = write(spec, folder)
        synth_s = time.perf_counter() - started
        started = time.perf_counter()
        pd.read_parquet(folder / "interactions.parquet")
        read_s = time.perf_counter() - started
        output = run(folder, quiet=False)
    _ = resource.getrusage(resource.RUSAGE_SELF)
    return BatchBenchResult(spec, events, synth_s, read_s, output.timings, output.metrics)
