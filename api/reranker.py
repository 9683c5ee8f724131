"""Re-rankers: the LightGBM model that went live with a u2i version, or a heuristic."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from tandem.api.exceptions import ModelRejected
from tandem.contracts.features import FEATURES, heuristic_scores

try:
    import lleaves
except ImportError:  # not installed on Python 3.13 (no llvmlite wheel): LightGBM scores
    lleaves = None

log = logging.getLogger(__name__)

# Compiled, a model of at most this many trees scores the most candidates a request can have
# (400) in a few hundred microseconds, less than the hop to a thread and back costs: it runs on
# the event loop. (80 trees of 15 leaves, the batch stage's size: ~40 µs for 200 candidates.)
INLINE_MAX_TREES = 300


class Reranker(Protocol):
    """Scores a feature matrix (rows in :data:`tandem.features.FEATURES` order)."""

    name: str

    @property
    def inline(self) -> bool:
        """Cheap and bounded enough to run on the event loop, skipping the thread hop."""

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class HeuristicReranker:
    """Used while the live version carries no trained model (a few vector operations)."""

    name = "heuristic"
    inline = True

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return heuristic_scores(features)


class LightGBMReranker:
    """A LightGBM booster trained on the shared features.

    It scores with LightGBM (in a thread: it releases the GIL, and the deadline can abandon it)
    until :meth:`compile` has turned its trees into machine code with lleaves, ~14 times faster
    on 200 candidates (LightGBM's predictor spends ~3 µs a row preparing it); then a model of
    at most :data:`INLINE_MAX_TREES` trees scores on the event loop.
    """

    def __init__(self, model_text: str, version: int) -> None:
        self.booster = lgb.Booster(model_str=model_text)
        names = tuple(self.booster.feature_name())
        if names != FEATURES:
            raise ModelRejected(
                f"model features {names} differ from the serving features {FEATURES}"
            )
        self.name = f"lightgbm:v{version}"
        self._text = model_text
        self._compiled: lleaves.Model | None = None
        self._small = self.booster.num_trees() <= INLINE_MAX_TREES

    @property
    def inline(self) -> bool:
        """Whether it runs on the event loop (compiled and small)."""
        return self._small and self._compiled is not None

    def compile(self) -> None:
        """Compile the trees (about a second of CPU for 80 trees; call it off the event loop).
        A model that does not compile keeps scoring with LightGBM."""
        if lleaves is None:
            log.info("%s: lleaves is not installed; scoring with LightGBM", self.name)
            return
        started = time.process_time()
        fd, path = tempfile.mkstemp(suffix=".txt", prefix="tandem-model-")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(self._text)
            compiled = lleaves.Model(model_file=path)
            compiled.compile(use_fp64=False)
        except Exception as e:  # llvmlite raises many kinds; LightGBM still scores meanwhile
            log.warning("%s: not compiled (%s); scoring with LightGBM", self.name, e)
            return
        finally:
            Path(path).unlink(missing_ok=True)
        self._compiled = compiled
        log.info("%s: compiled in %.2f s of CPU", self.name, time.process_time() - started)

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        compiled = self._compiled
        if compiled is not None:
            scores: npt.NDArray[np.float32] = compiled.predict(features, n_jobs=1)
            return scores
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float32)


def load_reranker(model_text: bytes | None, version: int) -> Reranker:
    """The version's model, or the heuristic when it has none or it does not load."""
    if model_text is None:
        return HeuristicReranker()
    try:
        return LightGBMReranker(model_text.decode(), version)
    except (ModelRejected, lgb.basic.LightGBMError) as e:
        log.error("u2i v%s: its re-ranker does not load (%s); using the heuristic", version, e)
        return HeuristicReranker()
