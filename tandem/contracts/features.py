"""The re-ranker's features: one pure builder shared by training (batch/) and serving (api/).

Every feature is something the API can compute at request time from the candidate lists, the
user's session signals, item categories and trending counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

from tandem.contracts.domain import KNOWN_DEVICES

FROM_U2I = 1
FROM_I2I = 2
FROM_POPULAR = 4

FEATURES = (
    "batch_score",
    "batch_rank",
    "from_u2i",
    "from_i2i",
    "from_popular",
    "session_affinity",
    "session_recency_s",
    "session_events",
    *(f"device_{d}" for d in KNOWN_DEVICES),
    "hour_of_day",
    "trending",
)
NO_RECENCY_S = 86_400.0
_SOURCE_BITS = np.array([FROM_U2I, FROM_I2I, FROM_POPULAR], dtype=np.int64)
_DEVICE_COLUMNS = {str(device): FEATURES.index(f"device_{device}") for device in KNOWN_DEVICES}


@dataclass(slots=True)
class Candidate:
    """One item competing for a place in the answer."""

    item_id: str
    batch_score: float
    batch_rank: int
    sources: int
    related_ms: int = 0  # time of the newest session item that led to it (i2i), 0 if none


@dataclass(slots=True)
class Candidates:
    """Candidates as columns, one list per :class:`Candidate` field: the API's hot path builds
    and reads these without an object per candidate (200-400 per request)."""

    item_ids: list[str]
    batch_scores: list[float]
    batch_ranks: list[int]
    sources: list[int]
    related_ms: list[int]

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> Candidates:
        """The columns of ``candidates``."""
        return cls(
            [c.item_id for c in candidates],
            [c.batch_score for c in candidates],
            [c.batch_rank for c in candidates],
            [c.sources for c in candidates],
            [c.related_ms for c in candidates],
        )

    def rows(self) -> list[Candidate]:
        """One :class:`Candidate` per row."""
        return [
            Candidate(*row)
            for row in zip(
                self.item_ids,
                self.batch_scores,
                self.batch_ranks,
                self.sources,
                self.related_ms,
                strict=True,
            )
        ]


@dataclass(frozen=True, slots=True)
class Context:
    """What is known of the request and the user's session."""

    now_ms: int
    device: str | None
    affinity: Mapping[str, float]
    session_events: int


def build_features(
    candidates: Sequence[Candidate],
    context: Context,
    categories: Mapping[str, str],
    trending: Mapping[str, float],
) -> npt.NDArray[np.float32]:
    """A ``len(candidates) × len(FEATURES)`` matrix, in the order of :data:`FEATURES`."""
    return feature_matrix(Candidates.of(candidates), context, categories, trending)


def feature_matrix(
    candidates: Candidates,
    context: Context,
    categories: Mapping[str, str],
    trending: Mapping[str, float],
) -> npt.NDArray[np.float32]:
    """:func:`build_features` of candidates held as columns."""
    # Column by column: one numpy store per column instead of one per cell (it runs on the API's
    # hot path, for up to 400 candidates per request).
    count = len(candidates)
    rows = np.zeros((count, len(FEATURES)), dtype=np.float32)
    if not count:
        return rows
    rows[:, 0] = candidates.batch_scores
    rows[:, 1] = candidates.batch_ranks
    sources = np.array(candidates.sources, dtype=np.int64)
    rows[:, 2:5] = (sources[:, None] & _SOURCE_BITS) != 0  # from_u2i, from_i2i, from_popular
    ids = candidates.item_ids
    if context.affinity and categories:
        affinity = context.affinity
        rows[:, 5] = [
            0.0 if (category := categories.get(item)) is None else affinity.get(category, 0.0)
            for item in ids
        ]
    if any(candidates.related_ms):
        related_ms = np.array(candidates.related_ms, dtype=np.int64)
        rows[:, 6] = np.where(
            related_ms != 0, np.maximum(0.0, (context.now_ms - related_ms) / 1000.0), NO_RECENCY_S
        )
    else:  # no candidate came from a session item (no session yet, most requests)
        rows[:, 6] = NO_RECENCY_S
    rows[:, 7] = context.session_events
    device_col = _DEVICE_COLUMNS.get(context.device or "", -1)
    if device_col >= 0:
        rows[:, device_col] = 1.0
    rows[:, 12] = (context.now_ms // 3_600_000) % 24
    if trending:
        counts = np.fromiter(map(trending.get, ids, repeat(0.0)), dtype=np.float64, count=count)
        rows[:, 13] = np.log1p(counts)
    return rows


def heuristic_scores(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The scorer used when a version carries no trained re-ranker: batch score, lifted by
    session affinity, fresh related items and trending; popular-only items stay a fallback."""
    recency = np.exp(-features[:, 6] / 600.0)
    popular_only = features[:, 4] * (1.0 - features[:, 2]) * (1.0 - features[:, 3])
    result: npt.NDArray[np.float32] = (
        features[:, 0]
        - 1.0 * popular_only
        + 0.3 * np.tanh(features[:, 5] / 4.0)
        + 0.2 * recency * features[:, 3]
        + 0.05 * features[:, 13]
    ).astype(np.float32)
    return result
