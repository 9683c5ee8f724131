"""Trending counts: per-minute tumbling windows of event counts per segment and item.

The worker adds counts in memory and flushes them as increments (ZINCRBY) into one Redis sorted
set per segment and minute, which expires after a few minutes; so several workers, each owning
some users, add up to the true counts. The top items over the recent minutes are then
re-computed into one sorted set per segment for the API.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tandem.contracts.schemas import Event

WINDOW_MS = 60_000
GLOBAL = "global"


def segments_of(event: Event) -> tuple[str, ...]:
    """The segments an event counts towards: everyone, and its device."""
    if event.device is None:
        return (GLOBAL,)
    return (GLOBAL, f"device:{event.device}")


def window_of(ts_ms: int) -> int:
    """The tumbling window (minute number since the epoch) of a time."""
    return ts_ms // WINDOW_MS


@dataclass
class TrendingCounts:
    """Counts added since the last flush, per (segment, window) and item."""

    pending: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        """Count one event."""
        self.add_all([event])

    def add_all(self, events: list[Event]) -> None:
        """Count events (the worker counts a batch at once)."""
        pending = self.pending
        for event in events:
            window = window_of(event.ts_ms)
            for segment in segments_of(event):
                counts = pending.get((segment, window))
                if counts is None:
                    counts = pending[(segment, window)] = Counter()
                counts[event.item_id] += 1

    def restore(self, taken: dict[tuple[str, int], Counter[str]]) -> None:
        """Put back counts that could not be written (added to any counted since)."""
        for key, counts in taken.items():
            self.pending.setdefault(key, Counter()).update(counts)

    def drain(self) -> dict[tuple[str, int], Counter[str]]:
        """Take every pending count (the caller writes them)."""
        taken, self.pending = self.pending, {}
        return taken
