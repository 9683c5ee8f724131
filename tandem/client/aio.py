"""The asyncio client (aiohttp, one pooled session per client)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from tandem.client.core import (
    Answer,
    Attempt,
    Plan,
    RetryPolicy,
    Wait,
    call_plan,
    decode,
    events_plan,
    recommendations_path,
)


class AsyncClient:
    """The tandem API at ``base_url``; use as ``async with AsyncClient(url) as api:``."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None

    async def recommendations(self, user_id: str, k: int = 20, device: str | None = None) -> Any:
        """``GET /v1/recommendations/{user_id}``: the answer as a dict."""
        path = recommendations_path(user_id, k, device)
        return await self._run(call_plan(self._retry, "GET", path))

    async def send_events(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """``POST /v1/events``; as :meth:`tandem.client.Client.send_events`."""
        ids: list[str] = await self._run(events_plan(self._retry, events))
        return ids

    async def get(self, path: str) -> Any:
        """Any other GET endpoint, with retries."""
        return await self._run(call_plan(self._retry, "GET", path))

    async def _run(self, plan: Plan) -> Any:
        step = next(plan)
        while True:
            try:
                if isinstance(step, Wait):
                    await asyncio.sleep(step.seconds)
                    step = plan.send(None)
                else:
                    step = plan.send(await self._send(step))
            except StopIteration as done:
                return done.value

    async def _send(self, attempt: Attempt) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        data = None if attempt.payload is None else orjson.dumps(attempt.payload)
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                attempt.method, self._base + attempt.path, data=data, headers=headers
            ) as reply:
                return reply.status, decode(await reply.read()), reply.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as e:
            return None, f"{type(e).__name__}: {e}", None

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()
