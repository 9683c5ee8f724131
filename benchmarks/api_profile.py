"""``python -m benchmarks.api_profile``: where one recommendation's CPU goes.

Seeds the stores as ``python -m benchmarks api`` does (with its LightGBM model), then answers
``--requests`` recommendations for distinct users in this process under pyinstrument, one at a
time (the service's code path without HTTP; the HTTP framing is what the bare handler of the API
benchmark costs), and prints the call tree and the CPU per request.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from pyinstrument import Profiler

from benchmarks.api_bench import _seed, tiny_model
from benchmarks.common import services
from tandem.api.service import Budget, RecommendationService
from tandem.contracts.settings import Settings
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.online import OnlineReader


async def _profile(settings: Settings, users: int, requests: int) -> None:
    redis = connect(settings)
    service = RecommendationService(
        OnlineReader(redis, Keys(settings.key_prefix)),
        Budget(1000, 1000, 60),  # generous: the profile is of the work, not of the deadline
        ThreadPoolExecutor(2),
    )
    for n in range(200):
        await service.recommend(f"u{users - 1 - n}", 20, None)
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    cpu_before = time.process_time()
    with profiler:
        for n in range(requests):
            answer = await service.recommend(f"u{n}", 20, None)
            assert answer.outcome == "ok", answer
    cpu = time.process_time() - cpu_before
    await service.drain()
    await redis.aclose()
    print(profiler.output_text(unicode=True, show_all=False, timeline=False))
    print(f"CPU per request (profiled, so inflated): {1e6 * cpu / requests:.0f} µs")


def main() -> None:
    """Run the profile (``--requests N``, default 3000)."""
    requests = int(sys.argv[sys.argv.index("--requests") + 1]) if "--requests" in sys.argv else 3000
    users = requests + 300
    with services(Settings.load(), kafka=False) as started:
        settings = started.model_copy(update={"key_prefix": "prof" + uuid.uuid4().hex[:6]})
        asyncio.run(_seed(settings, users, tiny_model()))
        asyncio.run(_profile(settings, users, requests))


if __name__ == "__main__":
    main()
