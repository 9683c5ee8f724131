"""Reading candidate lists to publish (JSON lines or parquet), and synthetic ones for load."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from tandem.batch.exceptions import InputError
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.schemas import CandidateList, parse_candidates

PARQUET_BATCH_ROWS = 10_000


def read_candidates(path: Path) -> Iterator[CandidateList]:
    """Candidate lists of a ``.parquet`` file or of a JSON-lines file (any other suffix)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        yield from _read_jsonl(path)


def _read_jsonl(path: Path) -> Iterator[CandidateList]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_candidates(orjson.loads(line))
            except orjson.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e})") from e
            except ValidationError as e:
                raise InputError(f"{path}:{number}: {e}") from e


def _read_parquet(path: Path) -> Iterator[CandidateList]:
    source = pq.ParquetFile(path)
    missing = {"entity_id", "items"} - set(source.schema_arrow.names)
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    row = 0
    for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["entity_id", "items"]):
        for obj in batch.to_pylist():
            row += 1
            try:
                yield parse_candidates(obj)
            except ValidationError as e:
                raise InputError(f"{path}: row {row}: {e}") from e


def synthetic_candidates(
    entities: int, candidates: int, seed: int = 0, items: int = 50_000, prefix: str = "u"
) -> Iterator[CandidateList]:
    """``entities`` lists of ``candidates`` random items with descending scores (for load)."""
    rng = random.Random(seed)
    for n in range(entities):
        picked = rng.sample(range(items), candidates)
        scores = sorted((rng.random() for _ in range(candidates)), reverse=True)
        yield CandidateList(f"{prefix}{n}", [f"i{i}" for i in picked], scores)
