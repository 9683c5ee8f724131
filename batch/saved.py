"""A batch run's output kept in a folder (``tandem batch run --out DIR``) to publish later
(``tandem publish --from-batch DIR``): one parquet file of candidate lists per store (the
``tandem publish --from`` format), the item categories, the re-ranker and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


def of_output(output: BatchOutput) -> Publishable:
    """The publishable parts of a run held in memory."""
    return Publishable(
        {U2I: output.u2i_rows, I2I: output.i2i_rows, POPULAR: output.popular_rows},
        output.categories_json(),
        output.reranker_model,
        output.metrics,
    )


def save(output: BatchOutput, out: Path) -> list[Path]:
    """Write a run's publishable output into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    what = of_output(output)
    written = []
    for store, name in LISTS.items():
        written.append(out / name)
        with pq.ParquetWriter(out / name, SCHEMA) as writer:
            rows = what.rows[store]()
            while batch := list(islice(rows, ROWS_PER_BATCH)):
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
    (out / CATEGORIES).write_bytes(what.categories)
    (out / METRICS).write_bytes(orjson.dumps(what.metrics, option=orjson.OPT_INDENT_2))
    written += [out / CATEGORIES, out / METRICS]
    if what.reranker is not None:
        (out / RERANKER).write_text(what.reranker)
        written.append(out / RERANKER)
    return written


def load_saved(folder: Path) -> Publishable:
    """A folder written by ``save``, checked for its files before anything is pushed."""
    needed = [*LISTS.values(), CATEGORIES, METRICS]
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
    return Publishable(
        {store: _reader(folder / name) for store, name in LISTS.items()},
        (folder / CATEGORIES).read_bytes(),
        reranker.read_text() if reranker.is_file() else None,
        metrics,
    )


def _reader(path: Path) -> Callable[[], Iterator[CandidateList]]:
    return lambda: read_candidates(path)
