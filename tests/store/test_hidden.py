"""Many hides and unhides in one round trip (the stream worker's batches), on the real Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tandem.store import hidden as hidden_module
from tandem.store.hidden import HiddenItems
from tandem.store.keys import Keys

pytestmark = pytest.mark.integration


async def test_changes_apply_in_order_and_move_the_version_once(redis: Redis, keys: Keys) -> None:
    items = HiddenItems(redis, keys)
    changed = await items.change_many([("a", True), ("b", True), ("a", False), ("c", False)])
    assert changed == [True, True, True, False]  # c was never hidden
    assert await items.items() == {"b"}
    assert await items.version() == "1"
    assert await redis.get(keys.global_epoch()) == b"1"
    assert await items.change_many([("b", True)]) == [False]
    assert await items.version() == "1"  # nothing changed: cached answers stay valid


async def test_a_full_set_refuses_a_hide_and_takes_the_rest(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hidden_module, "MAX_HIDDEN", 2)
    items = HiddenItems(redis, keys)
    changed = await items.change_many([("a", True), ("b", True), ("c", True), ("a", False)])
    assert changed == [True, True, None, True]
    assert await items.items() == {"b"}
