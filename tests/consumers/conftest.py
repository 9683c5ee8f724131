"""Helpers for tests of publishing and materializing: a store of each test's own, and runners."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from tandem.consumers.materializer import Materializer, MaterializerOptions
from tandem.contracts.settings import Settings, StorePolicy


@pytest.fixture
def store() -> str:
    """A store name of this test's own, so no other test's version topics are seen."""
    return "s" + uuid.uuid4().hex[:10]


@pytest.fixture
def store_settings(settings: Settings, store: str) -> Settings:
    """The test's settings with only its own store configured."""
    policy = StorePolicy(ttl_s=3600, min_coverage=0.9, max_empty_share=0.05, keep_versions=2)
    return settings.model_copy(update={"stores": {store: policy}})


@contextlib.asynccontextmanager
async def materializing(settings: Settings, **options: object) -> AsyncIterator[None]:
    """A materializer running in this event loop (with a group of its own) until the block ends."""
    group = "g" + uuid.uuid4().hex[:8]
    materializer = Materializer(settings, MaterializerOptions(group=group, **options))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(materializer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
