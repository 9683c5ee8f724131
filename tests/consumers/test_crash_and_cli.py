"""The materializer killed mid-version, and the operator's CLI, as separate processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.publish import Publisher
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.shell.processes import environment
from tandem.store.keys import Keys
from tandem.store.registry import Registry
from tandem.store.writer import VersionWriter
from tests.consumers.pushes import good_records, raw_push
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def tandem(
    settings: Settings, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem", *args],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


async def applied(redis: Redis, keys: Keys, store: str, version: int) -> int:
    writer = VersionWriter(redis, keys, store, version)
    return sum(p.count for p in (await writer.load_all()).values())


async def test_sigkill_midway_loses_nothing_counts_nothing_twice(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    total = 20_000
    with Publisher(store_settings) as publisher:
        push = publisher.publish(store, synthetic_candidates(total, 20, seed=9))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tandem",
        "materialize",
        "--batch-size",
        "50",
        env=environment(store_settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen = await wait_for(
            lambda: applied(redis, keys, store, push.version), 40, "the first records to be applied"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    assert 0 < seen < total, "the kill should land mid-version; raise the record count"
    restart = await asyncio.to_thread(
        tandem, store_settings, "materialize", "--until-idle", "2", timeout_s=120
    )
    assert restart.returncode == 0, restart.stderr[-2000:]
    info = await Registry(redis, keys).get(store, push.version)
    assert info is not None
    assert info.state is State.LIVE, info.reasons
    assert info.count == total
    assert info.checksum == push.checksum


async def test_operator_cli(
    store_settings: Settings, store: str, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    source = tmp_path / "candidates.jsonl"
    rows = [
        {"entity_id": f"u{n}", "items": [{"item_id": f"i{n}", "score": 0.5}]} for n in range(50)
    ]
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    for _ in range(2):
        out = tandem(store_settings, "publish", store, "--from", str(source), "--partitions", "2")
        assert out.returncode == 0, out.stderr
        assert "50 records in 2 partitions" in out.stdout
        run = tandem(store_settings, "materialize", "--until-idle", "1", timeout_s=120)
        assert run.returncode == 0, run.stderr[-2000:]
    listed = orjson.loads(tandem(store_settings, "versions", "list", store, "--json").stdout)
    assert [v["state"] for v in listed["versions"]] == ["backup", "live"]
    shown = tandem(store_settings, "versions", "show", store, str(listed["live"]), "--json")
    assert orjson.loads(shown.stdout)["count"] == 50
    back = tandem(store_settings, "versions", "rollback", store)
    assert back.returncode == 0, back.stderr
    assert f"to v{listed['backup']}" in back.stdout
    refused = tandem(store_settings, "versions", "rollback", store)
    assert refused.returncode == 1
    assert "no backup version" in refused.stderr


def test_bad_input_file_is_refused_naming_the_line(
    store_settings: Settings, store: str, tmp_path: Path
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(
        '{"entity_id": "u1", "items": []}\n{"entity_id": "u2", "items": '
        '[{"item_id": "i1", "score": "high"}]}\n'
    )
    out = tandem(store_settings, "publish", store, "--from", str(source))
    assert out.returncode == 1
    assert "bad.jsonl:2: items[0].score: must be a number" in out.stderr
    unknown = tandem(store_settings, "publish", "nosuchstore", "--synthetic", "5")
    assert unknown.returncode == 2
    assert "TANDEM_STORES" in unknown.stderr


async def test_until_idle_ends_beside_an_unfinished_push_the_operator_aborts(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    version = raw_push(store_settings, store, good_records(20), end=False)
    run = tandem(store_settings, "materialize", "--until-idle", "1", timeout_s=90)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"incomplete versions {store} v{version}" in run.stderr
    info = await Registry(redis, keys).get(store, version)
    assert info is not None
    assert info.state is State.INGESTING
    out = tandem(store_settings, "versions", "abort", store, str(version))
    assert out.returncode == 0, out.stderr
    assert f"{store} v{version}: aborted (aborted by the operator)" in out.stdout
    info = await Registry(redis, keys).get(store, version)
    assert info is not None
    assert info.state is State.ABORTED
    for pattern in keys.version_patterns(store, version):
        assert [k async for k in redis.scan_iter(match=pattern)] == []
