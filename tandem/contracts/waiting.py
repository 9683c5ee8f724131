"""Waiting, with a bound, for something another process makes true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tandem.contracts.exceptions import WaitTimeout

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; :class:`WaitTimeout` after the bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
