"""A batch run published to the real broker, materialized into Redis, served by the API."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.batch.pipeline import run
from tandem.batch.publish import publish_output
from tandem.batch.synth import SynthSpec, write
from tandem.consumers.replay import replay
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.store.keys import Keys
from tandem.store.registry import Registry

pytestmark = pytest.mark.integration


async def test_published_versions_serve_with_their_reranker(
    settings: Settings, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    write(SynthSpec(users=120, items=80, days=10, events_per_user=20, seed=5), tmp_path)
    output = run(tmp_path, quiet=True)
    lines = publish_output(settings, output, ["u2i", "i2i", "popular"])
    versions = {line.split()[1]: int(line.split()[2][1:].rstrip(":")) for line in lines}
    for store, version in versions.items():
        info = await replay(settings, store, version, cutover=True)
        assert info.state is State.LIVE, info.reasons
    u2i = versions["u2i"]
    u2i_info = await Registry(redis, keys).get("u2i", u2i)
    assert u2i_info is not None
    assert u2i_info.metadata["metrics"]["ranker_ndcg@10"] == output.metrics["ranker_ndcg@10"]
    model = await redis.get(keys.model("u2i", u2i))
    assert isinstance(model, bytes)
    assert model.startswith(b"tree")
    categories = orjson.loads(await redis.get(keys.attachment("u2i", u2i, "categories")) or b"{}")
    assert len(categories) == output.data.n_items
    user = str(output.data.users[0])
    async with TestClient(TestServer(create_app(settings))) as client:
        body = await (await client.get(f"/v1/recommendations/{user}?k=5")).json()
    assert body["reranker"] == f"lightgbm:v{u2i}"
    assert len(body["items"]) == 5
    expected = {"u2i": u2i, "i2i": versions["i2i"], "popular": versions["popular"]}
    assert body["versions"] == {store: str(version) for store, version in expected.items()}
