"""A batch run's output kept in a folder (``tandem batch run --out DIR``) to publish later
(``tandem publish --from-batch DIR``): one parquet file of candidate lists per store (the
``tandem publish --from`` format; u2i may be a ``u2i/`` folder of parts, one per user
partition, as a Dask run writes it), the item categories, the re-ranker and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tandem.batch.candidates_io import read_candidates
from tandem.batch.exceptions import InputError
from tandem.contracts.domain import I2I, POPULAR, U2I
from tandem.contracts.schemas import CandidateList

if TYPE_CHECKING:
    from tandem.batch.pipeline import BatchOutput

LISTS = {U2I: "u2i.parquet", I2I: "i2i.parquet", POPULAR: "popular.parquet"}
CATEGORIES, RERANKER, METRICS = "categories.json", "reranker.txt", "metrics.json"
PARTS = "u2i"  # u2i/part-NNNNN.parquet: u2i written partition by partition (on Dask)
ROWS_PER_BATCH = 10_000
SCHEMA = pa.schema(
    [
        ("entity_id", pa.string()),
        ("items", pa.list_(pa.struct([("item_id", pa.string()), ("score", pa.float64())]))),
    ]
)


@dataclass
class Publishable:
    """What a push of the batch stores needs: each store's lists, u2i's attachments, metrics."""

    rows: dict[str, Callable[[], Iterator[CandidateList]]]
    categories: bytes
    reranker: str | None
    metrics: dict[str, float]
    u2i_parts: list[Path] = field(default_factory=list)  # u2i as written partition by partition


def of_output(output: BatchOutput) -> Publishable:
    """The publishable parts of a run held in memory."""
    return Publishable(
        {U2I: output.u2i_rows, I2I: output.i2i_rows, POPULAR: output.popular_rows},
        output.categories_json(),
        output.reranker_model,
        output.metrics,
        output.u2i_parts,
    )


def save(output: BatchOutput, out: Path) -> list[Path]:
    """Write a run's publishable output into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    what = of_output(output)
    written = []
    for store, name in LISTS.items():
        parts = output.u2i_parts if store == U2I else []
        if parts and all(part.parent == out / PARTS for part in parts):
            written += parts  # written there partition by partition already
            continue
        written.append(out / name)
        write_lists(out / name, what.rows[store]())
    (out / CATEGORIES).write_bytes(what.categories)
    (out / METRICS).write_bytes(orjson.dumps(what.metrics, option=orjson.OPT_INDENT_2))
    written += [out / CATEGORIES, out / METRICS]
    if what.reranker is not None:
        (out / RERANKER).write_text(what.reranker)
        written.append(out / RERANKER)
    return written


def write_lists(path: Path, rows: Iterable[CandidateList]) -> int:
    """Candidate lists into one parquet file (the ``tandem publish --from`` format); returns
    how many were written."""
    count = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        rows = iter(rows)
        while batch := list(islice(rows, ROWS_PER_BATCH)):
            count += len(batch)
            writer.write_table(
                pa.Table.from_pylist(
                    [
                        {
                            "entity_id": row.entity_id,
                            "items": [
                                {"item_id": i, "score": s}
                                for i, s in zip(row.item_ids, row.scores, strict=True)
                            ],
                        }
                        for row in batch
                    ],
                    schema=SCHEMA,
                )
            )
    return count


def load_saved(folder: Path) -> Publishable:
    """A folder written by ``save``, checked for its files before anything is pushed."""
    parts = sorted((folder / PARTS).glob("part-*.parquet"))
    needed = [*LISTS.values(), CATEGORIES, METRICS]
    if parts:
        needed.remove(LISTS[U2I])
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"{folder}: not a batch output folder (missing {', '.join(missing)}); "
            "write one with `tandem batch run --data DATA --out DIR`"
        )
    try:
        metrics = orjson.loads((folder / METRICS).read_bytes())
    except orjson.JSONDecodeError as e:
        raise InputError(f"{folder / METRICS}: not valid JSON ({e})") from e
    reranker = folder / RERANKER
    rows = {store: _reader([folder / name]) for store, name in LISTS.items()}
    if parts:
        rows[U2I] = _reader(parts)
    return Publishable(
        rows,
        (folder / CATEGORIES).read_bytes(),
        reranker.read_text() if reranker.is_file() else None,
        metrics,
        parts,
    )


def _reader(paths: list[Path]) -> Callable[[], Iterator[CandidateList]]:
    return lambda: (row for path in paths for row in read_candidates(path))
