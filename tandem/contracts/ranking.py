"""Merging candidate sources: pure code shared by serving (api/) and training (batch/)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from tandem.contracts.domain import EXCLUDED_EVENTS
from tandem.contracts.features import FROM_I2I, FROM_POPULAR, FROM_U2I, Candidate, Candidates

MAX_CANDIDATES = 400
SESSION_SEEDS = 5


@dataclass(frozen=True, slots=True)
class SessionView:
    """What ranking needs of a session."""

    recent_items: list[tuple[str, str, int]]  # (item, event type, ts_ms), oldest first
    affinity: dict[str, float]
    events: int

    @property
    def excluded(self) -> set[str]:
        """Items not to recommend again (bought or disliked in this session)."""
        return {item for item, kind, _ in self.recent_items if kind in EXCLUDED_EVENTS}

    def seeds(self) -> list[tuple[str, int]]:
        """The newest distinct session items (item, ts_ms) whose similar items are candidates."""
        found: dict[str, int] = {}
        for item, kind, ts in reversed(self.recent_items):
            if kind not in EXCLUDED_EVENTS and item not in found:
                found[item] = ts
            if len(found) == SESSION_SEEDS:
                break
        return list(found.items())


NO_SESSION = SessionView([], {}, 0)


def merge(
    u2i: tuple[list[str], list[float]],
    i2i: Iterable[tuple[int, tuple[list[str], list[float]]]],
    popular: tuple[list[str], list[float]],
    excluded: Container[str],
    want: int,
) -> list[Candidate]:
    """One list of distinct candidates: user candidates first, then items similar to the
    session's items (``(related_ms, list)`` pairs), then popular items as the fallback, only
    while there are fewer than ``want``."""
    return merge_columns(u2i, i2i, popular, excluded, want).rows()


def merge_columns(
    u2i: tuple[list[str], list[float]],
    i2i: Iterable[tuple[int, tuple[list[str], list[float]]]],
    popular: tuple[list[str], list[float]],
    excluded: Container[str],
    want: int,
    *,
    shortcut: bool = True,
) -> Candidates:
    """:func:`merge` as columns (the API's hot path: no object per candidate). Without session
    candidates it takes :func:`_u2i_only` where that applies (``shortcut=False``: never)."""
    i2i = list(i2i)
    if shortcut and not i2i:
        only = _u2i_only(u2i, excluded, want)
        if only is not None:
            return only
    merged = Candidates([], [], [], [], [])
    at: dict[str, int] = {}  # row of each item in ``merged``

    def add(
        ids: Sequence[str], scores: Sequence[float], source: int, related_ms: int, limit: int
    ) -> None:
        sources, related = merged.sources, merged.related_ms
        for rank, item in enumerate(ids):
            found = at.get(item)
            if found is not None:
                sources[found] |= source
                related[found] = max(related[found], related_ms)
            elif item not in excluded:
                if len(at) >= limit:
                    return
                at[item] = len(at)
                merged.item_ids.append(item)
                merged.batch_scores.append(scores[rank])
                merged.batch_ranks.append(rank)
                sources.append(source)
                related.append(related_ms)

    add(*u2i, FROM_U2I, 0, MAX_CANDIDATES)
    for related_ms, (ids, scores) in i2i:
        add(ids, scores, FROM_I2I, related_ms, MAX_CANDIDATES)
    if len(at) < want:
        add(*popular, FROM_POPULAR, 0, want)
    return merged


def _u2i_only(
    u2i: tuple[list[str], list[float]], excluded: Container[str], want: int
) -> Candidates | None:
    """:func:`merge_columns` without session candidates (most requests: a user with no session
    yet) in a few list operations instead of a Python step per candidate; None where popular
    items have to be added (too few candidates left)."""
    ids, scores = u2i
    distinct = len(set(ids)) == len(ids)
    if distinct and isinstance(excluded, set | frozenset) and not excluded:
        count = min(len(ids), MAX_CANDIDATES)
        if count < want:
            return None
        kept_ids, kept_scores, ranks = ids[:count], scores[:count], list(range(count))
    else:
        every: Sequence[int] = range(len(ids))
        if not distinct:  # an item's first rank: a repeat only adds the source it already has
            every = sorted(dict(zip(reversed(ids), reversed(every), strict=True)).values())
        ranks = [rank for rank in every if ids[rank] not in excluded][:MAX_CANDIDATES]
        count = len(ranks)
        if count < want:
            return None
        kept_ids, kept_scores = [ids[rank] for rank in ranks], [scores[rank] for rank in ranks]
    return Candidates(kept_ids, kept_scores, ranks, [FROM_U2I] * count, [0] * count)
