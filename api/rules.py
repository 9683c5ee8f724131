"""Business rules every answer obeys, the fallback snapshot's included: items of the user's
session with the configured event types, the request's ``exclude=`` list, the items the user hid
and the items an operator hid are never recommended."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass

from tandem.api.exceptions import BadRequest
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import ID_RULE, check_id
from tandem.contracts.ranking import SessionView

log = logging.getLogger(__name__)

MAX_EXCLUDE = 100
# Longer than any list of MAX_EXCLUDE ids a client would send, short enough that the request
# line stays within what aiohttp reads (8 KiB) however the characters are percent-encoded.
MAX_EXCLUDE_CHARS = 2000
EXCLUDE_PATTERN = rf"^[A-Za-z0-9._:@-]{{1,128}}(,[A-Za-z0-9._:@-]{{1,128}}){{0,{MAX_EXCLUDE - 1}}}$"
NOTHING: frozenset[str] = frozenset()


def parse_exclude(raw: str | None) -> frozenset[str]:
    """The ``exclude`` query parameter: up to ``MAX_EXCLUDE`` comma-separated item ids."""
    if raw is None:
        return NOTHING
    parts = raw.split(",")
    if len(parts) > MAX_EXCLUDE or len(raw) > MAX_EXCLUDE_CHARS:
        raise BadRequest(
            f"exclude takes at most {MAX_EXCLUDE} item ids ({MAX_EXCLUDE_CHARS} characters)",
            field="exclude",
        )
    try:
        return frozenset(check_id(part, "exclude") for part in parts)
    except ValidationError as e:
        raise BadRequest(
            f"exclude must be comma-separated item ids, each {ID_RULE}", field="exclude"
        ) from e


@dataclass(frozen=True, slots=True)
class Excluded:
    """Items an answer may not hold: a small per-request set, and the process's hidden set
    (checked in place: it may be large, and is the same for every request)."""

    mine: frozenset[str] | set[str]
    hidden: frozenset[str]

    def __contains__(self, item: object) -> bool:
        return item in self.mine or item in self.hidden


SMALL_UNION = 256  # hidden sets up to this size are merged into a request's set


def excluding(mine: frozenset[str] | set[str], hidden: frozenset[str]) -> Container[str]:
    """What a request may not recommend, in the form cheapest to check in the merge loop (a
    plain set where possible: a Python ``__contains__`` per candidate costs tens of µs)."""
    if not hidden:
        return mine
    if not mine:
        return hidden
    return mine | hidden if len(hidden) <= SMALL_UNION else Excluded(mine, hidden)


def seen(view: SessionView, types: frozenset[str]) -> set[str]:
    """The session's items with an event of one of ``types``."""
    return {item for item, kind, _ in view.recent_items if kind in types}


class HiddenSet:
    """This process's copy of the items hidden from every answer.

    Every recommendation reads the set's version in its first round trip; when it moved, the
    request reloads the set (one load at a time, the others wait for it) before answering, so a
    hide counts from the next request on. The fallback snapshot, used while Redis is down, is
    filtered with the last copy.
    """

    def __init__(self) -> None:
        self.version = 0
        self.items: frozenset[str] = frozenset()
        self._loading: asyncio.Future[bool] | None = None

    def current(self, version: str) -> bool:
        """Whether the copy is at least as new as ``version`` (the hot path's check)."""
        return int(version or 0) <= self.version

    async def sync(self, version: str, load: Callable[[], Awaitable[set[str]]]) -> bool:
        """Bring the copy to ``version`` or later; False when a load failed (the copy is stale)."""
        wanted = int(version or 0)
        for _ in range(2):  # a load under way may have started before ``version`` was made
            if wanted <= self.version:
                return True
            if self._loading is None or self._loading.done():
                self._loading = asyncio.ensure_future(self._load(wanted, load))
            if not await asyncio.shield(self._loading):
                return False
        return wanted <= self.version

    async def _load(self, version: int, load: Callable[[], Awaitable[set[str]]]) -> bool:
        """Load the set; it is at least as new as ``version``, read before the load started."""
        try:
            items = await load()
        except Exception as e:  # a Redis or timeout error: the caller answers without caching
            log.warning("could not reload the hidden items (%r); using the last copy", e)
            return False
        self.items, self.version = frozenset(items), max(self.version, version)
        log.info("hidden items: %d (version %d)", len(items), version)
        return True
