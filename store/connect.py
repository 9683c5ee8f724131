"""Opening the Redis client every tandem process uses: one Redis, or a Redis Cluster when the URL
says ``redis+cluster://`` (``rediss+cluster://`` with TLS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from tandem.contracts.settings import Settings

CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})


def connect(settings: Settings, *, timeout_s: float | None = None) -> Redis:
    """An asyncio client with bounded socket timeouts (bytes in, bytes out).

    A cluster client is returned under the ``Redis`` type: tandem uses only the commands both
    share, with keys laid out (``store/keys.py``) so that each script touches one slot.
    """
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    url = settings.redis_url.get_secret_value()
    if urlsplit(url).scheme in CLUSTER_SCHEMES:
        cluster = RedisCluster.from_url(
            url.replace("+cluster", "", 1),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cast("Redis", cluster)
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


def is_cluster(redis: Redis) -> bool:
    """Whether ``redis`` talks to a Redis Cluster."""
    return isinstance(redis, RedisCluster)


def queue_script(
    pipe: Pipeline, script: str, keys: Sequence[str], args: Sequence[Any] = ()
) -> None:
    """Queue a Lua script on a pipeline (``EVAL``: on a cluster the pipeline sends each command to
    the node of its slot, where ``EVALSHA`` could find the script not loaded)."""
    pipe.eval(script, len(keys), *keys, *args)
