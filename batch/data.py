"""Reading interactions and items, with the checks that name the bad column and row.

Interactions: ``user_id``, ``item_id``, ``ts`` required (epoch milliseconds or a date-time
string); ``event_type`` (default ``view``), ``device`` (default ``other``), ``session_id``
(default: a new session after 30 minutes without events) and ``weight`` (default: by event
type) optional. Items: ``item_id`` and optional ``category`` (default ``unknown``); other
columns are kept as item features.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tandem.batch.exceptions import InputError
from tandem.contracts.domain import POSITIVE_WEIGHTS

SESSION_GAP_MS = 30 * 60 * 1000
REQUIRED = ("user_id", "item_id", "ts")


@dataclass
class Dataset:
    """Interactions with integer codes for users and items, sorted by time."""

    events: pd.DataFrame  # user, item (codes), ts, event_type, device, session, weight
    users: pd.Index  # code → user id
    items: pd.Index  # code → item id
    item_category: np.ndarray  # code → category code
    categories: pd.Index  # category code → name

    @property
    def n_users(self) -> int:
        """Number of distinct users."""
        return len(self.users)

    @property
    def n_items(self) -> int:
        """Number of distinct items."""
        return len(self.items)


def code(value: Any) -> int:
    """An integer code out of a pandas group key (typed loosely by pandas)."""
    return int(value)


def _read_partitioned(path: Path) -> pd.DataFrame:
    """A folder of Parquet (or CSV) partitions, read with dask.dataframe."""
    import dask.dataframe as dd

    with warnings.catch_warnings():
        # dask 2026.8 calls reset_index(inplace=True), deprecated by pandas 3.1: not ours to fix
        warnings.filterwarnings("ignore", "The inplace keyword")
        if any(path.glob("*.parquet")):
            frame: pd.DataFrame = dd.read_parquet(str(path / "*.parquet")).compute()
        elif any(path.glob("*.csv")):
            frame = dd.read_csv(
                str(path / "*.csv"), dtype={"user_id": str, "item_id": str, "session_id": str}
            ).compute()
        else:
            raise InputError(f"{path}: a folder without .parquet or .csv partitions")
    return frame.reset_index(drop=True)


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        return _read_partitioned(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path, dtype={"user_id": str, "item_id": str, "session_id": str})
    raise InputError(f"{path}: expected .parquet or .csv")


def _first_bad(path: Path, column: str, bad: pd.Series, rule: str) -> InputError:
    row = int(np.flatnonzero(bad.to_numpy())[0])
    return InputError(f"{path}: column {column!r}, row {row + 1}: {rule}")


def _timestamps(path: Path, ts: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(ts):
        return ts.to_numpy(dtype=np.int64)
    parsed = pd.to_datetime(ts, errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        raise _first_bad(path, "ts", parsed.isna(), "not epoch milliseconds or a date-time")
    return (parsed.astype("int64") // 1_000_000).to_numpy()


def _check(path: Path, frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"(have: {', '.join(map(str, frame.columns))})"
        )
    for column in ("user_id", "item_id"):
        values = frame[column].astype("string")
        empty = values.isna() | (values.str.len() == 0)
        if empty.any():
            raise _first_bad(path, column, empty, "empty id")


def _sessions(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Session numbers from a 30-minute inactivity gap (input sorted by user, then time)."""
    new = np.ones(user.size, dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (ts[1:] - ts[:-1] > SESSION_GAP_MS)
    return np.cumsum(new) - 1


def load(interactions: Path, items: Path | None = None) -> Dataset:
    """Read, check and encode a data set."""
    frame = _read(interactions)
    _check(interactions, frame)
    ts = _timestamps(interactions, frame["ts"])
    event_type = (
        frame["event_type"].astype(str)
        if "event_type" in frame
        else pd.Series("view", index=frame.index)
    )
    unknown = ~event_type.isin(list(POSITIVE_WEIGHTS))
    if unknown.any():
        raise _first_bad(
            interactions, "event_type", unknown, "must be one of " + ", ".join(POSITIVE_WEIGHTS)
        )
    users = pd.Index(frame["user_id"].astype(str).unique())
    item_frame = _read(items) if items is not None else None
    item_ids = frame["item_id"].astype(str)
    all_items = pd.Index(
        pd.concat([item_ids, item_frame["item_id"].astype(str)]).unique()
        if item_frame is not None
        else item_ids.unique()
    )
    events = pd.DataFrame(
        {
            "user": users.get_indexer(frame["user_id"].astype(str)).astype(np.int32),
            "item": all_items.get_indexer(item_ids).astype(np.int32),
            "ts": ts,
            "event_type": event_type.to_numpy(),
            "device": frame["device"].astype(str).to_numpy() if "device" in frame else "other",
            "weight": (
                frame["weight"].to_numpy(dtype=np.float32)
                if "weight" in frame
                else event_type.map(POSITIVE_WEIGHTS).to_numpy(dtype=np.float32)
            ),
        }
    )
    order = np.lexsort((events["ts"].to_numpy(), events["user"].to_numpy()))
    events = events.iloc[order].reset_index(drop=True)
    if "session_id" in frame:
        ordered = frame["session_id"].astype(str).to_numpy()[order]
        events["session"] = pd.factorize(ordered)[0]
    else:
        events["session"] = _sessions(events["user"].to_numpy(), events["ts"].to_numpy())
    categories, item_category = _categories(all_items, item_frame, items)
    return Dataset(events, users, all_items, item_category, categories)


def _categories(
    all_items: pd.Index, item_frame: pd.DataFrame | None, path: Path | None
) -> tuple[pd.Index, np.ndarray]:
    if item_frame is None or "category" not in item_frame:
        return pd.Index(["unknown"]), np.zeros(len(all_items), dtype=np.int32)
    if "item_id" not in item_frame:
        raise InputError(f"{path}: missing required column 'item_id'")
    by_item = item_frame.drop_duplicates("item_id").set_index(
        item_frame["item_id"].astype(str).drop_duplicates()
    )
    names = by_item["category"].astype(str).reindex(all_items).fillna("unknown")
    codes, categories = pd.factorize(names)
    return pd.Index(categories), codes.astype(np.int32)
