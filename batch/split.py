"""Evaluation protocols: which interactions train and which are held out.

- ``time``: one global split time; everything before it trains, everything from it is held out.
- ``last-n``: each user's last N (or N%) interactions by time are held out, for users with
  enough history; everything else trains.

Training inputs of every kind (candidates, ranker labels, features, popularity) come from
``Split.train`` only; the ranker's labels come from splitting ``train`` again the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tandem.batch.exceptions import InputError

PROTOCOLS = ("time", "last-n")
TEST_SHARE = 0.15
MIN_HISTORY = 3  # training events a user keeps in the last-n protocol


@dataclass(frozen=True)
class Protocol:
    """How to split: ``time`` (``share`` of the time span held out) or ``last-n``."""

    name: str = "time"
    share: float = TEST_SHARE  # time: share of the span; last-n with a percentage: share of events
    last_n: int | None = None  # last-n: a fixed count per user (else ``share`` of them)

    @classmethod
    def parse(cls, name: str, last_n: str = "20%") -> Protocol:
        """``Protocol.parse("last-n", "20%")``, ``Protocol.parse("last-n", "5")``, ``("time")``."""
        if name == "time":
            return cls("time")
        if name != "last-n":
            raise InputError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", last_n)
        if not found:
            raise InputError(f"--last-n {last_n!r}: expected a count (5) or a percentage (20%)")
        value = float(found.group(1))
        if found.group(2):
            if not 0 < value < 100:
                raise InputError(f"--last-n {last_n!r}: a percentage between 0 and 100")
            return cls("last-n", share=value / 100)
        if value < 1 or value != int(value):
            raise InputError(f"--last-n {last_n!r}: a whole count of at least 1")
        return cls("last-n", last_n=int(value))

    def inner(self) -> Protocol:
        """The protocol that splits the training part again with the same held-out horizon:
        under ``time`` the training part spans ``1 - share`` of the time, so the same length
        of time is a larger share of it (the ranker learns from a window as long as the one it
        is judged on); ``last-n`` already holds out the same per user."""
        if self.name != "time":
            return self
        return Protocol("time", share=self.share / (1 - self.share))

    def describe(self) -> str:
        """Short text for reports."""
        if self.name == "time":
            return f"time (last {self.share:.0%} of the time span held out)"
        held = f"{self.last_n}" if self.last_n is not None else f"{self.share:.0%}"
        return f"last-n (each user's last {held} interactions held out)"


@dataclass
class Split:
    """Training interactions, held-out interactions, and the time training data is "as of"."""

    train: pd.DataFrame
    test: pd.DataFrame
    now_ms: int  # the clock of the training data: after every training event


def split(events: pd.DataFrame, protocol: Protocol) -> Split:
    """Split ``events`` (sorted by user, then time) by ``protocol``."""
    if events.empty:
        raise InputError("no interactions to split")
    if protocol.name == "time":
        lo, hi = int(events["ts"].min()), int(events["ts"].max())
        cut = hi - int((hi - lo) * protocol.share)
        before = (events["ts"] < cut).to_numpy()
        return Split(events.loc[before], events.loc[~before], cut)
    held = _held_out(events, protocol)
    train = events.loc[~held]
    return Split(train, events.loc[held], int(train["ts"].max()) + 1)


def _held_out(events: pd.DataFrame, protocol: Protocol) -> np.ndarray:
    user = events["user"].to_numpy()
    size = pd.Series(user).groupby(user).transform("size").to_numpy()
    # position from the end within the user's events (0: the newest); events are sorted
    from_end = size - 1 - pd.Series(user).groupby(user).cumcount().to_numpy()
    if protocol.last_n is not None:
        n_held = np.full(size.shape, protocol.last_n)
    else:
        n_held = np.maximum(1, np.floor(size * protocol.share)).astype(np.int64)
    held: np.ndarray = (from_end < n_held) & (size - n_held >= MIN_HISTORY)
    return held
