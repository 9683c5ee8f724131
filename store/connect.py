"""Opening the Redis client every tandem process uses: one Redis, or a Redis Cluster when the URL
says ``redis+cluster://`` (``rediss+cluster://`` with TLS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

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


Command = tuple[Any, ...]


def script(source: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Command:
    """A Lua script as one command (``EVAL``: on a cluster a pipeline sends each command to the
    node of its slot, where ``EVALSHA`` could find the script not loaded)."""
    return ("EVAL", source, len(keys), *keys, *args)


def queue_script(
    pipe: Pipeline, source: str, keys: Sequence[str], args: Sequence[Any] = ()
) -> None:
    """Queue a Lua script (:func:`script`) on a pipeline."""
    pipe.execute_command(*script(source, keys, args))


async def round_trip(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    """The replies to ``commands`` (each ``(name, *args)``), sent together in one round trip, as
    the server gives them (no response callbacks: ``ZRANGE … WITHSCORES`` is a flat list).

    On one Redis they go straight to a pooled connection: redis-py's pipeline machinery (command
    stacks, callbacks, a retry wrapper, a shielded release task) costs about as much client CPU
    again as the round trip itself. A connection that fails (a restarted Redis leaves the pool's
    stale) is dropped and the commands sent once more on a fresh one; they must be safe to
    repeat. A command's error reply is raised once every reply has been read, so the connection
    goes back to the pool in step. On a cluster, a pipeline sends each command to its slot's node.
    """
    if is_cluster(redis):
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute()
        return replies
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        try:
            return await _exchange(connection, commands)
        except RedisConnectionError:
            await connection.disconnect()
            return await _exchange(connection, commands)  # connects again
    except BaseException:
        await connection.disconnect()  # cancelled or failed halfway: replies may be unread
        raise
    finally:
        await pool.release(connection)


async def _exchange(connection: Any, commands: Sequence[Command]) -> list[Any]:
    await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
    replies: list[Any] = []
    refused: ResponseError | None = None
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as e:  # the other replies are still to be read
            refused = refused or e
            replies.append(e)
    if refused is not None:
        raise refused
    return replies
