"""``tandem simulate canary`` in small: the guard aborts the worse canary, promotes the better."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from tandem.batch.from_logs import read_logs, train_from_logs
from tandem.contracts.settings import Settings
from tandem.shell.experiment_commands import summary
from tandem.shell.simulate import Spec, simulate

pytestmark = pytest.mark.integration


async def test_the_guard_aborts_the_worse_canary_and_promotes_the_better(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr("sim-token")})
    spec = Spec(users=300, min_impressions=80, promote_after=200, decide_timeout_s=60)
    results = await simulate(settings, tmp_path, spec)
    worse, better = results["worse"], results["better"]
    assert worse["outcome"] == "aborted", summary("worse", worse)
    assert any("ctr" in reason for reason in worse["reasons"]), worse["reasons"]
    assert better["outcome"] == "promoted", summary("better", better)
    assert better["ctr"]["canary"]["ctr"] > better["ctr"]["control"]["ctr"]
    for found in (worse, better):
        assert min(found["impressions"].values()) >= spec.min_impressions
        assert found["decided_after_s"] is not None

    # The re-ranker trains from what was logged on the real topics: the simulation's answers
    # and the clicks that name them, labelled as of a time when every impression has matured.
    impressions, events = await asyncio.to_thread(read_logs, settings)
    wait_ms = 60_000
    result = train_from_logs(impressions, events, wait_ms, time.time_ns() // 1_000_000 + wait_ms)
    assert result.model is not None and result.sessions >= 200, result
