"""The recommendation itself: read, merge, re-rank under a deadline, answer, cache."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Container
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tandem.api import metrics
from tandem.api.exceptions import Unavailable
from tandem.api.impressions import Impression, ImpressionLog
from tandem.api.models import version_id
from tandem.api.reranker import LightGBMReranker, Reranker, load_reranker
from tandem.api.rules import NOTHING, HiddenSet, excluding, seen
from tandem.contracts.domain import EXCLUDED_EVENTS, I2I, POPULAR, U2I
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.features import (
    FEATURES,
    FROM_I2I,
    FROM_POPULAR,
    FROM_U2I,
    Candidates,
    Context,
    feature_matrix,
)
from tandem.contracts.logctx import REQUEST_ID
from tandem.contracts.ranking import NO_SESSION, SessionView, merge_columns
from tandem.contracts.session import SessionState
from tandem.store.exceptions import StoreError
from tandem.store.hidden import HiddenItems
from tandem.store.online import Assignment, OnlineReader, RequestData, Versions

log = logging.getLogger(__name__)

SOURCE_NAMES = ((FROM_U2I, U2I), (FROM_I2I, I2I), (FROM_POPULAR, POPULAR))
MIN_CANDIDATES = 50
MAX_SHADOWS = 8  # shadow answers computed at once, at most (beyond: not sampled)
SNAPSHOT_LOG_EVERY_S = 5.0  # at most one warning line this often while answers are degraded


@dataclass(frozen=True, slots=True)
class Answer:
    """A response body and how it was made (ok, cached or degraded), for metrics."""

    body: bytes
    outcome: str


@dataclass(frozen=True)
class Budget:
    """How long a request may take, and how long each Redis call may."""

    deadline_ms: int
    redis_timeout_ms: int
    cache_ttl_s: int


def _session(raw: bytes | None) -> tuple[SessionView, str | None]:
    if raw is None:
        return NO_SESSION, None
    try:
        state = SessionState.decode(raw)
    except ValidationError as e:
        log.warning("ignoring an unreadable session: %s", e)
        return NO_SESSION, None
    return state.view(), state.device


# The sources of each bit mask (three bits): an answer's items share these tuples.
_SOURCES = tuple(tuple(name for bit, name in SOURCE_NAMES if mask & bit) for mask in range(8))


class RecommendationService:
    """Everything one API process needs to answer ``GET /v1/recommendations/{user}``."""

    def __init__(
        self,
        reader: OnlineReader,
        budget: Budget,
        executor: Executor,
        *,
        seen_types: frozenset[str] = EXCLUDED_EVENTS,
        hidden_items: HiddenItems | None = None,
    ) -> None:
        self._reader = reader
        self._seen_types = seen_types  # session items of these event types are not recommended
        self._hidden_items = hidden_items  # where the items hidden from every answer are read
        self.hidden = HiddenSet()
        self._budget = budget
        self._executor = executor
        self._rerankers: dict[int | None, Reranker] = {None: load_reranker(None, 0)}
        self.categories: dict[str, str] = {}
        self.snapshot: dict[str, tuple[list[str], list[float]]] = {}
        self._pending: set[asyncio.Future[None]] = set()
        self._observed: Versions | None = None
        self._loading: dict[int, asyncio.Future[Reranker | None]] = {}
        self._categories: dict[int, dict[str, str]] = {}  # per u2i version (live and canary)
        self.impressions: ImpressionLog | None = None
        self._shadows: set[asyncio.Future[None]] = set()
        self._snapshot_logged = float("-inf")

    async def recommend(
        self, user: str, k: int, device: str | None, exclude: frozenset[str] = NOTHING
    ) -> Answer:
        """The JSON answer for ``user``, without the items of ``exclude`` (such an answer is
        neither read from nor written to the cache); degraded (never late) when the budget runs
        out."""
        started = time.perf_counter()
        deadline = started + self._budget.deadline_ms / 1000
        segment = f"device:{device}" if device else "global"
        try:
            async with asyncio.timeout(self._redis_timeout(deadline)):  # no task, unlike wait_for
                data = await self._read(user, k, device or "any", segment, not exclude)
        except (RedisError, OSError, TimeoutError, StoreError) as e:
            return self._from_snapshot(user, k, segment, started, e, exclude)
        metrics.VARIANTS.labels(data.assignment.variant).inc()
        if data.cached is not None:
            metrics.CACHE_HITS.inc()
            if self._logs_impression():
                self._impression(data.cached, data.assignment, started, cached=True)
            return Answer(_envelope(data.cached, cached=True, started=started), "cached")
        if data.popular[0]:
            self.snapshot[segment] = data.popular
        if data.versions != self._observed and not data.assignment.canaries:  # at a cutover
            _observe(data.versions)
            self._observed = data.versions
        cacheable = await self._sync_hidden(data.hidden_version, deadline) and not exclude
        session, session_device = _session(data.session)
        similar = await self._similar(data, session, deadline)
        excluded = self.rules(session, data.user_hidden | exclude)
        candidates = merge_columns(
            data.u2i, similar, data.popular, excluded, want=max(3 * k, MIN_CANDIDATES)
        )
        context = Context(
            int(time.time() * 1000), device or session_device, session.affinity, session.events
        )
        reranker = await self._assets(data.versions.u2i)
        categories = self._categories.get(data.versions.u2i or 0, self.categories)
        order, scores, rows = await self._rank(
            candidates, context, (categories, data.trending), reranker, deadline
        )
        degraded = rows is None
        ids, sources = candidates.item_ids, candidates.sources
        items = [
            {
                "item_id": ids[i],
                "score": round(scores[i], 6),
                "sources": _SOURCES[sources[i]],
            }
            for i in order[:k]
        ]
        fields = _fields(
            user, items, data.versions, reranker.name, degraded, "deadline" if degraded else None
        )
        core = _with_variant(orjson.dumps(fields), data.assignment)
        if not degraded and cacheable:
            self._cache(data, core)
        body = _envelope(core, cached=False, started=started)
        if self._logs_impression():
            if rows is None:  # degraded: not re-ranked, yet the record carries the features
                rows = feature_matrix(candidates, context, categories, data.trending)
            self._impression(core, data.assignment, started, answer=(fields, rows[order[:k]]))
        if data.shadow is not None and not degraded:
            self._start_shadow(data, user, k, (similar, excluded, context), items)
        return Answer(body, "degraded" if degraded else "ok")

    def _start_shadow(
        self,
        data: RequestData,
        user: str,
        k: int,
        inputs: tuple[list[tuple[int, tuple[list[str], list[float]]]], Any, Context],
        served: list[dict[str, Any]],
    ) -> None:
        """Compute a shadow canary's answer in the background, for sampled requests and a
        bounded number at a time: the answer served never waits for it."""
        if len(self._shadows) >= MAX_SHADOWS or data.shadow is None:
            return
        if self.impressions is not None and not self.impressions.wants():
            return
        task = asyncio.ensure_future(
            self._shadow(data, data.shadow, user, k, inputs, {i["item_id"] for i in served})
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        data: RequestData,
        version: int,
        user: str,
        k: int,
        inputs: tuple[list[tuple[int, tuple[list[str], list[float]]]], Any, Context],
        served: set[str],
    ) -> None:
        similar, excluded, context = inputs
        started = time.perf_counter()
        try:
            u2i = await self._reader.candidates(U2I, version, user)
            want = max(3 * k, MIN_CANDIDATES)
            candidates = merge_columns(u2i, similar, data.popular, excluded, want=want)
            reranker = await self._assets(version)
            features = (self._categories.get(version, {}), data.trending)
            deadline = time.perf_counter() + self._budget.deadline_ms / 1000
            order, _, _ = await self._rank(candidates, context, features, reranker, deadline)
            shown = {candidates.item_ids[i] for i in order[:k]}
            overlap = len(shown & served) / max(1, len(served))
            took_ms = (time.perf_counter() - started) * 1000
            await self._reader.record_shadow(version, overlap, took_ms)
        except (RedisError, OSError, TimeoutError) as e:
            log.debug("a shadow answer of u2i v%s was not recorded: %s", version, e)

    async def _read(
        self, user: str, k: int, device: str, segment: str, use_cache: bool
    ) -> RequestData:
        """The first round trip, tried a second time (within the caller's budget) when a
        connection failed: a cluster client that refreshes its topology after a failover closes
        the connections other requests are using, and those reads deserve a fresh one."""
        try:
            return await self._reader.read(user, k, device, segment, use_cache=use_cache)
        except RedisConnectionError as e:
            log.debug("Redis read failed (%s); trying once more", e)
            metrics.READ_RETRIES.inc()
            return await self._reader.read(user, k, device, segment, use_cache=use_cache)

    def rules(self, session: SessionView, mine: frozenset[str]) -> Container[str]:
        """What an answer may not hold: the session's items of the excluded event types, the
        request's and user's own (``mine``), and the items an operator hid."""
        return excluding(seen(session, self._seen_types) | mine, self.hidden.items)

    def _logs_impression(self) -> bool:
        """Whether this answer goes to the impression log (there is one and it samples it)."""
        return self.impressions is not None and self.impressions.wants()

    def _impression(
        self,
        core: bytes,
        assignment: Assignment,
        started: float,
        *,
        cached: bool = False,
        answer: tuple[dict[str, Any], npt.NDArray[np.float32]] | None = None,
    ) -> None:
        """Offer a sampled answer to the impression log (``answer``: its fields and the shown
        items' feature rows, when the request path has them)."""
        if self.impressions is None:
            return
        took_ms = (time.perf_counter() - started) * 1000
        fields, features = answer if answer is not None else (None, None)
        self.impressions.offer(
            Impression(
                REQUEST_ID.get() or uuid.uuid4().hex,
                int(time.time() * 1000),
                took_ms,
                cached,
                core,
                assignment,
                fields,
                features,
            )
        )

    async def _sync_hidden(self, version: str, deadline: float) -> bool:
        """Whether this process's copy of the hidden items is at least as new as ``version``
        (reloaded when it is not); an answer made with a stale copy is not cached."""
        if self._hidden_items is None or self.hidden.current(version):
            return True
        try:
            async with asyncio.timeout(self._redis_timeout(deadline)):
                return await self.hidden.sync(version, self._hidden_items.items)
        except TimeoutError:
            return False

    async def refresh_hidden(self, every_s: float, stop: asyncio.Event) -> None:
        """Keep the copy of the hidden items current while no request comes (the fallback
        snapshot, served while Redis is down, is filtered with it), until ``stop`` is set.
        A read under way is never cancelled: that could leave a connection half-read."""
        if self._hidden_items is None:
            return
        while not stop.is_set():
            try:
                version = await self._hidden_items.version()
                await self.hidden.sync(version, self._hidden_items.items)
            except (RedisError, OSError) as e:
                log.debug("hidden items not refreshed: %r", e)
            except Exception:
                # A background loop must outlive a client's bug: redis-py's cluster client can
                # raise AttributeError on a connection a failover closed under it.
                log.warning("hidden items not refreshed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def _redis_timeout(self, deadline: float) -> float:
        left = max(0.0, deadline - time.perf_counter())
        return min(left, self._budget.redis_timeout_ms / 1000)

    async def _similar(
        self, data: RequestData, session: SessionView, deadline: float
    ) -> list[tuple[int, tuple[list[str], list[float]]]]:
        seeds = session.seeds()
        if not seeds or data.versions.i2i is None:
            return []
        try:
            async with asyncio.timeout(self._redis_timeout(deadline)):
                lists = await self._reader.similar(data.versions.i2i, [item for item, _ in seeds])
        except (RedisError, OSError, TimeoutError):
            log.warning("i2i read failed or timed out; answering without session candidates")
            return []
        return [(ts, found) for (_, ts), found in zip(seeds, lists, strict=True) if found]

    async def _assets(self, version: int | None) -> Reranker:
        """The re-ranker of a u2i version (and its item categories), loaded once per version:
        requests arriving while it loads wait for the same load."""
        found = self._rerankers.get(version)
        if found is not None:
            return found
        if version is None:
            return self._rerankers[None]
        loading = self._loading.get(version)
        if loading is None or (loading.done() and loading.result() is None):  # none, or failed
            loading = asyncio.ensure_future(self._load(version))
            self._loading = {
                **{v: f for v, f in self._loading.items() if not f.done()},
                version: loading,
            }
        # Shielded: a request that gives up (its client went away) leaves the load to the others.
        return await asyncio.shield(loading) or self._rerankers[None]

    async def _load(self, version: int) -> Reranker | None:
        """Read and load a version's re-ranker; None if Redis did not answer in time."""
        try:
            text, categories = await asyncio.wait_for(
                self._reader.attachments(version), self._budget.redis_timeout_ms / 1000
            )
        except (RedisError, OSError, TimeoutError):
            return None
        # In the request's context, so what load_reranker logs carries the request id.
        loop = asyncio.get_running_loop()
        reranker = await loop.run_in_executor(
            self._executor, contextvars.copy_context().run, load_reranker, text, version
        )
        # Keep two versions besides the default: the live one and a canary's.
        kept = [v for v in self._rerankers if v is not None and v != version][-1:]
        self._rerankers = {
            None: self._rerankers[None],
            **{v: self._rerankers[v] for v in kept},
            version: reranker,
        }
        self._categories = {**{v: self._categories.get(v, {}) for v in kept}, version: categories}
        if isinstance(reranker, LightGBMReranker):  # faster once compiled; scores meanwhile
            self._background(loop.run_in_executor(self._executor, reranker.compile))
        self.categories = categories
        log.info(
            "u2i v%s: re-ranking with %s, %d item categories",
            version,
            reranker.name,
            len(categories),
        )
        return reranker

    async def _rank(
        self,
        candidates: Candidates,
        context: Context,
        trending: tuple[dict[str, str], dict[str, float]],
        reranker: Reranker,
        deadline: float,
    ) -> tuple[list[int], list[float], npt.NDArray[np.float32] | None]:
        """The order and scores of ``candidates`` (``trending``: item categories and trending
        counts) and the feature rows they were scored on, or batch order and None when the
        deadline does not allow re-ranking."""
        batch_order = list(range(len(candidates)))
        batch_scores = candidates.batch_scores
        if not batch_order:
            return batch_order, batch_scores, np.zeros((0, len(FEATURES)), dtype=np.float32)
        left = deadline - time.perf_counter()
        if getattr(reranker, "inline", False) and left > 0:
            rows, scores = self._score(reranker, candidates, context, trending)
            return np.argsort(-scores, kind="stable").tolist(), scores.tolist(), rows
        if left <= 0:
            metrics.DEGRADED.labels("deadline").inc()
            return batch_order, batch_scores, None
        try:
            rows, scores = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    self._executor, self._score, reranker, candidates, context, trending
                ),
                left,
            )
        except TimeoutError:
            metrics.DEGRADED.labels("deadline").inc()
            return batch_order, batch_scores, None
        order = np.argsort(-scores, kind="stable").tolist()
        return order, scores.tolist(), rows

    def _score(
        self,
        reranker: Reranker,
        candidates: Candidates,
        context: Context,
        trending: tuple[dict[str, str], dict[str, float]],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        with metrics.RERANK.time():
            rows = feature_matrix(candidates, context, *trending)
            return rows, reranker.score(rows)

    def _from_snapshot(
        self,
        user: str,
        k: int,
        segment: str,
        started: float,
        error: BaseException,
        exclude: frozenset[str],
    ) -> Answer:
        popular = self.snapshot.get(segment) or self.snapshot.get("global")
        if popular is None:
            raise Unavailable(
                "Redis is unreachable and no popular items are cached yet; retry shortly"
            ) from error
        metrics.DEGRADED.labels("redis").inc()
        now = time.monotonic()
        if now - self._snapshot_logged >= SNAPSHOT_LOG_EVERY_S:  # one line per 5 s, not per answer
            self._snapshot_logged = now
            log.warning(
                "Redis read failed (%s: %s): answering from the snapshot",
                type(error).__name__,
                error,
            )
        excluded = excluding(exclude, self.hidden.items)
        items = [
            {"item_id": i, "score": round(s, 6), "sources": [POPULAR]}
            for i, s in zip(*popular, strict=True)
            if i not in excluded
        ][:k]
        fields = _fields(user, items, Versions(None, None, None), "none", True, "redis unavailable")
        core = _with_variant(orjson.dumps(fields), Assignment())
        if self._logs_impression():  # shown, so logged too
            self._impression(core, Assignment(), started)
        return Answer(_envelope(core, cached=False, started=started), "degraded")

    def _cache(self, data: RequestData, core: bytes) -> None:
        self._reader.store_answer(data, core, self._budget.cache_ttl_s)

    def _background(self, work: asyncio.Future[None]) -> None:
        """Keep ``work`` referenced until done (and awaited by :meth:`drain`)."""
        self._pending.add(work)
        work.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for cache writes and shadow answers still in flight (at shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._reader.flush()


def _observe(versions: Versions) -> None:
    for store, version in (
        (U2I, versions.u2i),
        (I2I, versions.i2i),
        (POPULAR, versions.popular),
    ):
        if version is not None:
            metrics.LIVE_VERSION.labels(store).set(version)


def _fields(
    user: str,
    items: list[dict[str, Any]],
    versions: Versions,
    reranker: str,
    degraded: bool,
    reason: str | None,
) -> dict[str, Any]:
    return {
        "user_id": user,
        "items": items,
        # Version ids exceed 2**53: JSON carries them as strings.
        "versions": {
            U2I: version_id(versions.u2i),
            I2I: version_id(versions.i2i),
            POPULAR: version_id(versions.popular),
        },
        "reranker": reranker,
        "degraded": degraded,
        "degraded_reason": reason,
    }


def _with_variant(core: bytes, assignment: Assignment) -> bytes:
    """The answer with the experiment variant it belongs to (and the canary stores, if any)."""
    extra = b',"variant":"%s","canaries":%s}' % (
        assignment.variant.encode(),
        orjson.dumps(list(assignment.canaries)),
    )
    return core[:-1] + extra


def _envelope(core: bytes, *, cached: bool, started: float) -> bytes:
    took_ms = (time.perf_counter() - started) * 1000
    head = b'{"cached":%s,"took_ms":%.3f,' % (b"true" if cached else b"false", took_ms)
    return head + core[1:]
