"""The version registry: one JSON record per store version, in one Redis hash per store."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio import Redis

from tandem.contracts.ids import check_version
from tandem.contracts.versions import State
from tandem.store.keys import Keys


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """Everything the registry knows of one version."""

    store: str
    version: int
    state: State
    partitions: int = 0
    count: int = 0
    checksum: str | None = None
    created_ms: int = field(default_factory=now_ms)
    updated_ms: int = field(default_factory=now_ms)
    reasons: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Stored and printed form."""
        return orjson.dumps(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> VersionInfo:
        """Inverse of :meth:`to_json`."""
        body = orjson.loads(raw)
        body["state"] = State(body["state"])
        body["reasons"] = tuple(body.get("reasons", ()))
        return cls(**body)


class Registry:
    """Reads and writes version records."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, store: str, version: int) -> VersionInfo | None:
        """The record of one version, or None."""
        raw = await self._redis.hget(self._keys.registry(store), str(check_version(version)))
        return None if raw is None else VersionInfo.from_json(raw)

    async def put(self, info: VersionInfo) -> None:
        """Create or replace a version's record."""
        await self._redis.hset(self._keys.registry(info.store), str(info.version), info.to_json())

    async def transition(self, store: str, states: dict[int, State]) -> list[str]:
        """Registry fields and records that move each version to its state: the arguments of a
        script that writes them in the same atomic step as a pointer flip."""
        args: list[str] = []
        for version, state in states.items():
            info = await self.get(store, version) or VersionInfo(store, version, state)
            info = replace(info, state=state, updated_ms=now_ms())
            args += [str(version), info.to_json().decode()]
        return args

    async def list(self, store: str) -> list[VersionInfo]:
        """Every recorded version of ``store``, oldest first."""
        raw = await self._redis.hgetall(self._keys.registry(store))
        return sorted((VersionInfo.from_json(v) for v in raw.values()), key=lambda i: i.version)

    async def update(self, store: str, version: int, state: State, **changes: Any) -> VersionInfo:
        """Move a version to ``state`` (creating its record if needed), with other changes."""
        info = await self.get(store, version) or VersionInfo(store, version, state)
        if "reasons" in changes:
            changes["reasons"] = tuple(changes["reasons"])
        info = replace(info, state=state, updated_ms=now_ms(), **changes)
        await self.put(info)
        return info
