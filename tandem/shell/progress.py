"""Progress of ``tandem materialize``: one bar per store counting the records written into Redis.

The bars read the materializer's own counter (``tandem_materializer_records_applied_total``), so
what they show is what the metrics report; they are drawn on a terminal only (tqdm turns itself
off when stderr is not one, e.g. under a supervisor or in the demo's log files)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from tqdm import tqdm

REFRESH_S = 0.5


class MaterializeProgress:
    """A bar per store, refreshed every :data:`REFRESH_S` from the materializer's metrics."""

    def __init__(self, stores: list[str], *, disable: bool | None = None) -> None:
        self._stores = sorted(stores)
        self._bars = {
            store: tqdm(
                desc=f"materialize {store}",
                unit="rec",
                position=i,
                disable=disable,
                leave=True,
                dynamic_ncols=True,
            )
            for i, store in enumerate(self._stores)
        }

    def applied(self, store: str) -> int:
        """Records of ``store`` this process has written into Redis so far."""
        from tandem.consumers.metrics import REGISTRY

        value = REGISTRY.get_sample_value(
            "tandem_materializer_records_applied_total", {"store": store}
        )
        return int(value or 0)

    def refresh(self) -> dict[str, int]:
        """Move each bar to its store's count; return the counts."""
        counts = {}
        for store, bar in self._bars.items():
            counts[store] = applied = self.applied(store)
            if applied > bar.n:
                bar.update(applied - bar.n)
        return counts

    async def watch(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` is set (or the task is cancelled)."""
        while not stop.is_set():
            self.refresh()
            try:
                await asyncio.wait_for(stop.wait(), REFRESH_S)
            except TimeoutError:
                continue

    def __enter__(self) -> MaterializeProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.refresh()
        for bar in self._bars.values():
            bar.close()
