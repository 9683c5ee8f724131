"""Re-rankers: the LightGBM model that went live with a u2i version, or a heuristic."""

from __future__ import annotations

import logging
from typing import Protocol

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from tandem.api.exceptions import ModelRejected
from tandem.contracts.features import FEATURES, heuristic_scores

log = logging.getLogger(__name__)


class Reranker(Protocol):
    """Scores a feature matrix (rows in :data:`tandem.features.FEATURES` order)."""

    name: str
    inline: bool  # cheap and bounded enough to run on the event loop, skipping the thread hop

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class HeuristicReranker:
    """Used while the live version carries no trained model (a few vector operations)."""

    name = "heuristic"
    inline = True

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return heuristic_scores(features)


class LightGBMReranker:
    """A LightGBM booster trained on the shared features (scored in a thread: it releases the
    GIL, and the deadline can abandon it)."""

    inline = False

    def __init__(self, model_text: str, version: int) -> None:
        self.booster = lgb.Booster(model_str=model_text)
        names = tuple(self.booster.feature_name())
        if names != FEATURES:
            raise ModelRejected(
                f"model features {names} differ from the serving features {FEATURES}"
            )
        self.name = f"lightgbm:v{version}"

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        scores: npt.NDArray[np.float32] = np.asarray(
            self.booster.predict(features, num_threads=1), dtype=np.float32
        )
        return scores


def load_reranker(model_text: bytes | None, version: int) -> Reranker:
    """The version's model, or the heuristic when it has none or it does not load."""
    if model_text is None:
        return HeuristicReranker()
    try:
        return LightGBMReranker(model_text.decode(), version)
    except (ModelRejected, lgb.basic.LightGBMError) as e:
        log.error("u2i v%s: its re-ranker does not load (%s); using the heuristic", version, e)
        return HeuristicReranker()
