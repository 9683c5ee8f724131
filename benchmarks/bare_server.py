"""The baseline of ``python -m benchmarks api``: an aiohttp handler doing one Redis GET of the
same bytes and answering with orjson.

Run as ``python -m benchmarks.bare_server PORT REDIS_URL KEY_TEMPLATE`` (``%s`` is the user).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import orjson
import uvloop
from aiohttp import web
from redis.asyncio import Redis

REDIS = web.AppKey("redis", Redis)
TEMPLATE = web.AppKey("template", str)


async def bare(request: web.Request) -> web.Response:
    """GET /bare/{user}: how many bytes the user's candidate list holds, as JSON."""
    user = request.match_info["user"]
    value = await request.app[REDIS].get(request.app[TEMPLATE] % user)
    body = orjson.dumps({"user_id": user, "bytes": len(value or b"")})
    return web.Response(body=body, content_type="application/json")


def main() -> None:
    """Serve until terminated."""
    port, url, template = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def clients(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = Redis.from_url(url)
        yield
        await app[REDIS].aclose()

    app = web.Application()
    app[TEMPLATE] = template
    app.cleanup_ctx.append(clients)
    app.router.add_get("/bare/{user}", bare)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
