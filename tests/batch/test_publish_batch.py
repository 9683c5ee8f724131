"""A batch run published to the real broker, materialized into Redis, served by the API."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.batch import engine, pipeline
from tandem.batch.pipeline import run
from tandem.batch.publish import Publisher, publish_output
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


async def test_u2i_written_and_published_part_by_part_on_dask_is_the_single_process_version(
    settings: Settings, redis: Redis, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "USERS_PER_PART", 40)
    write(SynthSpec(users=120, items=80, days=10, events_per_user=20, seed=6), tmp_path)
    in_memory = run(tmp_path, quiet=True)
    parted = run(tmp_path, pipeline.Options(parts_dir=tmp_path / "out" / "u2i"), quiet=True)
    assert len(parted.u2i_parts) == 3 and parted.u2i.empty
    with Publisher(settings) as publisher:
        alone = publisher.publish("u2i", in_memory.u2i_rows())
        with engine.dask_cluster(None, 2) as (on_dask, _), engine.using(on_dask):
            on_workers = publisher.publish("u2i", (), files=parted.u2i_parts)
    assert on_dask.tasks == 3  # one task per part, each with its own producer
    assert on_workers.counts == alone.counts and on_workers.checksums == alone.checksums
    assert on_workers.count == in_memory.data.n_users
    registry = Registry(redis, keys)
    for result in (alone, on_workers):  # materialized from the topic: Redis agrees
        info = await replay(settings, "u2i", result.version, cutover=False)
        assert info.state is State.INGESTED, info.reasons
        stored = await registry.get("u2i", result.version)
        assert stored is not None
        assert (stored.count, stored.checksum) == (alone.count, alone.checksum)
