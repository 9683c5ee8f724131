"""Opening the Redis client every tandem process uses."""

from __future__ import annotations

from redis.asyncio import Redis

from tandem.contracts.settings import Settings


def connect(settings: Settings, *, timeout_s: float | None = None) -> Redis:
    """An asyncio Redis client with bounded socket timeouts (bytes in, bytes out)."""
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    return Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
