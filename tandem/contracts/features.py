"""The re-ranker's features: one pure builder shared by training (batch/) and serving (api/).

Every feature is something the API can compute at request time from the candidate lists, the
user's session signals, item categories and trending counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
_DEVICE_COLUMNS = {str(device): FEATURES.index(f"device_{device}") for device in KNOWN_DEVICES}


@dataclass(slots=True)
class Candidate:
    """One item competing for a place in the answer."""

    item_id: str
    batch_score: float
    batch_rank: int
    sources: int
    related_ms: int = 0  # time of the newest session item that led to it (i2i), 0 if none


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
    rows = np.zeros((len(candidates), len(FEATURES)), dtype=np.float32)
    hour = (context.now_ms // 3_600_000) % 24
    device_col = _DEVICE_COLUMNS.get(context.device or "", -1)
    for n, cand in enumerate(candidates):
        row = rows[n]
        row[0] = cand.batch_score
        row[1] = cand.batch_rank
        row[2] = 1.0 if cand.sources & FROM_U2I else 0.0
        row[3] = 1.0 if cand.sources & FROM_I2I else 0.0
        row[4] = 1.0 if cand.sources & FROM_POPULAR else 0.0
        category = categories.get(cand.item_id)
        row[5] = context.affinity.get(category, 0.0) if category is not None else 0.0
        row[6] = (
            max(0.0, (context.now_ms - cand.related_ms) / 1000.0)
            if cand.related_ms
            else NO_RECENCY_S
        )
        row[7] = context.session_events
        if device_col >= 0:
            row[device_col] = 1.0
        row[12] = hour
        row[13] = math.log1p(trending.get(cand.item_id, 0.0))
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
