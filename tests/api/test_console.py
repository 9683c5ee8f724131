"""The web console: its pure parts, its JSON endpoints against the real broker and Redis, and
the page itself driven through a rollback in headless Chromium."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio import Redis

from tandem.api import lag
from tandem.api.console import CONSOLE, gates_of
from tandem.api.latency import LiveWindow, Snapshot, between, quantile
from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.publish import Publisher
from tandem.consumers.materializer import GROUP, Materializer, MaterializerOptions
from tandem.contracts import topics
from tandem.contracts.features import FEATURES
from tandem.contracts.kafka import make_consumer
from tandem.contracts.session import SessionState
from tandem.contracts.settings import Settings, StorePolicy
from tandem.contracts.versions import State
from tandem.store.keys import Keys
from tandem.store.registry import Registry, VersionInfo
from tandem.streams.app import WorkerOptions
from tandem.streams.runner import running
from tests.api.conftest import put_version
from tests.api.test_rank import tiny_model
from tests.helpers import read_messages, wait_for

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": "Bearer s3cret-token"}
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INF = float("inf")


# -- pure ---------------------------------------------------------------------------------------


def test_default_groups_are_the_components_group_ids() -> None:
    assert lag.MATERIALIZER_GROUP == GROUP
    assert WorkerOptions().app_id == lag.WORKER_GROUP


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.01, 0.0), (0.02, 10.0), (INF, 10.0)], 0.015),  # inside the second bucket
        (0.99, [(0.01, 99.0), (0.02, 100.0), (INF, 100.0)], 0.01),
        (0.5, [(0.01, 2.0), (INF, 10.0)], 0.01),  # in +Inf: the highest finite bound
        (0.5, [(0.01, 0.0), (INF, 0.0)], None),  # nothing observed
        (0.5, [], None),
    ],
)
def test_quantile_interpolates_like_prometheus(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    found = quantile(q, buckets)
    assert found == expected if expected is None else math.isclose(found or 0, expected)


def test_window_counts_only_what_happened_in_it() -> None:
    old = Snapshot(10.0, ((0.005, 5.0), (0.05, 10.0), (INF, 10.0)), {"ok": 10.0})
    new = Snapshot(
        20.0,
        ((0.005, 5.0), (0.05, 26.0), (INF, 30.0)),
        {"ok": 24.0, "degraded": 4.0, "cached": 1.0, "503": 1.0},
    )
    seen = between(old, new)
    assert (seen.requests, seen.errors, seen.rate_per_s) == (20, 1, 2.0)
    assert seen.degraded_share == round(4 / 19, 4)
    assert seen.p50_ms is not None
    assert 5.0 < seen.p50_ms <= 50.0  # all 20 new answers were slower than 5 ms


def test_live_window_reads_the_histogram() -> None:
    histogram = Histogram("t_seconds", "t", ["route", "outcome"], registry=CollectorRegistry())
    window = LiveWindow(histogram, "/r")
    for _ in range(3):
        histogram.labels("/r", "ok").observe(0.002)
    histogram.labels("/r", "degraded").observe(0.2)
    histogram.labels("/other", "ok").observe(1.0)
    seen = window.read()
    assert (seen.requests, seen.degraded_share, seen.errors) == (4, 0.25, 0)
    assert seen.p99_ms is not None
    assert seen.p99_ms > 100


def test_lag_is_summed_per_topic_and_never_negative() -> None:
    rows = [
        lag.PartitionOffsets("b", 0, 5, 9),
        lag.PartitionOffsets("a", 0, 10, 10),
        lag.PartitionOffsets("b", 1, 7, 6),  # a stale end read after the commit
    ]
    assert [t.model_dump() for t in lag.summarize(rows)] == [
        {"topic": "a", "partitions": 1, "committed": 10, "end": 10, "lag": 0},
        {"topic": "b", "partitions": 2, "committed": 12, "end": 15, "lag": 4},
    ]


@pytest.mark.parametrize(
    ("state", "passed"),
    [
        (State.LIVE, True),
        (State.ROLLED_BACK, True),
        (State.REJECTED, False),
        (State.ABORTED, False),
        (State.INGESTED, None),
        (State.PUSHED, None),
    ],
)
def test_gates_follow_the_state(state: State, passed: bool | None) -> None:
    info = VersionInfo("u2i", 4, state, reasons=("why",), metadata={"metrics": {"ndcg": 0.3}})
    gates = gates_of(info)
    assert (gates.passed, gates.reasons, gates.metrics) == (passed, ["why"], {"ndcg": 0.3})


# -- against the real broker and Redis ---------------------------------------------------------


async def call(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await client.request(method, path, **kwargs)
    return response.status, orjson.loads(await response.read())


async def seed(redis: Redis, keys: Keys) -> None:
    """u2i v1 then v2 live (v1 the backup), v3 rejected, each with a model; i2i and popular;
    a session for alice whose click on a3 brings i2i candidates."""
    registry = Registry(redis, keys)
    model = tiny_model(list(FEATURES))
    for version, count in ((1, 1000), (2, 1010)):
        await registry.put(
            VersionInfo(
                "u2i",
                version,
                State.INGESTED,
                partitions=3,
                count=count,
                checksum=hashlib.sha256(b"%d" % version).hexdigest()[:16],
                metadata={"metrics": {"ndcg@10": 0.3 + version / 100}},
            )
        )
        await redis.set(keys.model("u2i", version), model)
        await redis.set(keys.attachment("u2i", version, "categories"), b'{"a1": "books"}')
        lists = {"alice": [(f"a{n}", 1.0 - n / 100 - version / 1000) for n in range(30)]}
        await put_version(redis, keys, "u2i", version, lists)
    await registry.put(
        VersionInfo("u2i", 3, State.REJECTED, count=400, reasons=("entity count 400 is 39.6%",))
    )
    await put_version(redis, keys, "i2i", 1, {"a3": [("sim1", 0.9), ("sim2", 0.8)]})
    await put_version(
        redis, keys, "popular", 1, {"global": [(f"pop{n}", 1 - n / 10) for n in range(10)]}
    )
    clicked_ms = time.time_ns() // 1_000_000 - 90_000
    session = SessionState(
        "s1",
        clicked_ms,
        clicked_ms,
        "mobile",
        (("a3", "click", clicked_ms),),
        {"click": 1},
        {"books": 1.5},
    )
    await redis.set(keys.session("alice"), session.encode())


@pytest.mark.integration
async def test_overview_needs_the_token_and_shows_versions_as_strings(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await seed(redis, keys)
    status, _ = await call(client, "GET", "/v1/admin/overview")
    assert status == 401
    status, _ = await call(
        client, "GET", "/v1/admin/overview", headers={"Authorization": "Bearer no"}
    )
    assert status == 403
    status, body = await call(client, "GET", "/v1/admin/overview", headers=AUTH)
    assert status == 200
    u2i = next(s for s in body["stores"] if s["store"] == "u2i")
    assert (u2i["live"], u2i["backup"]) == ("2", "1")
    rows = {v["version"]: v for v in u2i["versions"]}
    assert [v["version"] for v in u2i["versions"]] == ["3", "2", "1"]  # newest first
    assert rows["2"]["state"] == "live"
    assert rows["2"]["count"] == 1010
    assert rows["2"]["gates"] == {"passed": True, "reasons": [], "metrics": {"ndcg@10": 0.32}}
    assert rows["3"]["gates"]["passed"] is False
    assert [rows[v]["can_cutover"] for v in ("1", "2", "3")] == [True, False, False]
    assert 0 <= rows["1"]["age_s"] < 60


@pytest.mark.integration
async def test_cutover_makes_a_version_live_and_announces_it(
    client: Client, redis: Redis, keys: Keys, api_settings: Settings
) -> None:
    await seed(redis, keys)
    await Registry(redis, keys).put(VersionInfo("u2i", 4, State.INGESTED, count=1000))
    path = "/v1/admin/stores/u2i/cutover"
    assert (await call(client, "POST", path, data=b'{"version": "1"}'))[0] == 401
    for body, status in (
        (b"{}", 400),
        (b'{"version": "x"}', 400),
        (b'{"version": "9"}', 404),
        (b'{"version": "3"}', 409),  # rejected by its gates
        (b'{"version": "4"}', 409),  # ingested: not known to have passed the gates
        (b'{"version": "2"}', 409),  # already live
    ):
        assert (await call(client, "POST", path, data=body, headers=AUTH))[0] == status, body
    assert (await call(client, "POST", "/v1/admin/stores/nope/cutover", data=b"{}", headers=AUTH))[
        0
    ] == 404
    status, answer = await call(client, "POST", path, data=b'{"version": "1"}', headers=AUTH)
    assert (status, answer) == (200, {"store": "u2i", "live": "1", "previous": "2"})
    assert await redis.get(keys.live("u2i")) == b"1"
    assert await redis.get(keys.backup("u2i")) == b"2"

    def announced() -> list[dict[str, Any]]:
        return [
            orjson.loads(m.value() or b"")
            for m in read_messages(api_settings, topics.VERSIONS)
            if m.key() == b"u2i"
        ]

    def ours(records: list[dict[str, Any]]) -> list[tuple[object, ...]]:
        # the topic is shared with other tests: only the console's announcements count
        return [
            (r["version"], r["cutover_from"])
            for r in records
            if r["state"] == "live" and r.get("by") == "console"
        ]

    # The announcement is produced after the answer: wait for it (bounded).
    found = await wait_for(
        lambda: asyncio.to_thread(lambda: ours(announced())), 20, "the console's LIVE record"
    )
    assert found == [(1, 2)]


@pytest.mark.integration
async def test_explain_matches_the_answer_and_its_contributions_add_up(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await seed(redis, keys)
    status, answer = await call(client, "GET", "/v1/recommendations/alice?k=5")
    assert status == 200
    assert answer["reranker"] == "lightgbm:v2"
    status, x = await call(client, "GET", "/v1/admin/explain?user=alice&k=5", headers=AUTH)
    assert status == 200
    assert x["order"] == [i["item_id"] for i in answer["items"]]
    assert x["reranker"] == "lightgbm:v2"
    assert x["features"] == list(FEATURES)
    assert x["session"]["seeds"] == ["a3"]
    assert x["session"]["affinity"] == {"books": 1.5}
    by_item = {c["item_id"]: c for c in x["candidates"]}
    assert by_item["sim1"]["sources"] == ["i2i"]
    assert by_item["a1"]["category"] == "books"
    assert sum(c["in_answer"] for c in x["candidates"]) == 5
    for c in x["candidates"]:
        raw = sum(c["contributions"]) + c["bias"]  # binary objective: score = sigmoid(raw)
        assert math.isclose(1 / (1 + math.exp(-raw)), c["score"], rel_tol=1e-4)
    for query in ("", "?user=bad%20id", "?user=alice&k=0", "?user=alice&device=fridge"):
        assert (await call(client, "GET", "/v1/admin/explain" + query, headers=AUTH))[0] == 400


@pytest.mark.integration
async def test_explain_without_a_model_shows_values_and_the_heuristic_order(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await put_version(redis, keys, "u2i", 1, {"dan": [("d0", 0.2), ("d1", 0.9), ("d2", 0.5)]})
    status, answer = await call(client, "GET", "/v1/recommendations/dan?k=3&device=tv")
    assert (status, answer["reranker"]) == (200, "heuristic")
    url = "/v1/admin/explain?user=dan&k=3&device=tv"
    status, x = await call(client, "GET", url, headers=AUTH)
    assert status == 200
    assert x["order"] == [i["item_id"] for i in answer["items"]] == ["d1", "d2", "d0"]
    assert (x["reranker"], x["contributions"], x["device"]) == ("heuristic", None, "tv")
    assert x["session"]["session_id"] is None
    assert x["versions"] == {"u2i": "1", "i2i": None, "popular": None}
    for c in x["candidates"]:
        assert (c["contributions"], c["bias"]) == (None, None)
        assert dict(zip(x["features"], c["values"], strict=True))["device_tv"] == 1.0
    # The business rules hold in the explanation as in the answer: dan hides d1.
    assert (await call(client, "PUT", "/v1/users/dan/hidden/d1"))[0] == 200
    status, answer = await call(client, "GET", "/v1/recommendations/dan?k=3&device=tv")
    status, x = await call(client, "GET", url, headers=AUTH)
    assert x["order"] == [i["item_id"] for i in answer["items"]] == ["d2", "d0"]
    assert x["session"]["excluded"] == ["d1"]


@pytest.mark.integration
async def test_lag_is_the_events_a_group_has_not_committed(
    client: Client, api_settings: Settings
) -> None:
    group = "console-" + uuid.uuid4().hex[:8]
    consumer = make_consumer(api_settings, group)
    try:
        meta = consumer.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
        ends = []
        for p in meta.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topics.EVENTS, p), timeout=10)
            ends.append(TopicPartition(topics.EVENTS, p, high))
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()
    client.app[CONSOLE].groups = {"test": group, "absent": "none-" + uuid.uuid4().hex[:8]}
    events = [{"user_id": "bob", "item_id": f"i{n}", "event_type": "view"} for n in range(3)]
    assert (await client.post("/v1/events", data=orjson.dumps(events))).status == 202
    status, body = await call(client, "GET", "/v1/admin/overview", headers=AUTH)
    assert status == 200
    lags = {g["role"]: g for g in body["lag"]}
    assert lags["test"]["lag"] == 3
    assert [t["topic"] for t in lags["test"]["topics"]] == [topics.EVENTS]
    assert lags["absent"] == {
        "role": "absent",
        "group": lags["absent"]["group"],
        "lag": 0,
        "topics": [],
        "error": None,
    }


@pytest.mark.integration
async def test_lag_of_a_real_materializer_and_worker(
    client: Client, api_settings: Settings
) -> None:
    """The console reads the groups the components really commit in: the materializer's
    version topics, the worker's (Faust's) tandem.events, both caught up."""
    store = "s" + uuid.uuid4().hex[:10]
    settings = api_settings.model_copy(update={"stores": {store: StorePolicy(ttl_s=3600)}})
    with Publisher(settings) as publisher:
        push = publisher.publish(store, synthetic_candidates(200, 10, seed=1))
    group, app_id = "m" + uuid.uuid4().hex[:8], "w" + uuid.uuid4().hex[:8]
    client.app[CONSOLE].groups = {"materializer": group, "worker": app_id}
    materializer = Materializer(settings, MaterializerOptions(group=group))
    stop = asyncio.Event()
    materializing = asyncio.create_task(materializer.run(stop))
    try:
        async with running(api_settings, WorkerOptions(app_id=app_id)):
            events = [{"user_id": "carol", "item_id": "i1", "event_type": "view"}]
            assert (await client.post("/v1/events", data=orjson.dumps(events))).status == 202

            async def caught_up() -> dict[str, Any] | None:
                _, body = await call(client, "GET", "/v1/admin/overview", headers=AUTH)
                lags = {g["role"]: g for g in body["lag"]}
                topics_of = {r: {t["topic"] for t in g["topics"]} for r, g in lags.items()}
                done = (
                    topics.version_topic(store, push.version) in topics_of["materializer"]
                    and topics.EVENTS in topics_of["worker"]
                    and lags["materializer"]["lag"] == 0
                    and lags["worker"]["lag"] == 0
                )
                return lags if done else None

            lags = await wait_for(caught_up, 40, "both groups to commit up to the ends")
    finally:
        stop.set()
        await asyncio.wait_for(materializing, 20)
    assert lags["materializer"]["error"] is None


# -- the page in headless Chromium --------------------------------------------------------------


class Browser:
    """Headless Chromium through Debian's chromedriver, with bounded waits on page state."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        options.add_argument("--window-size=1500,2200")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=str(CHROMEDRIVER))
        self.driver = webdriver.Chrome(options=options, service=service)
        # The page re-renders its panels every 2 s: an element found just before may be stale.
        self.wait = WebDriverWait(
            self.driver, 20, ignored_exceptions=[StaleElementReferenceException]
        )

    def text(self, selector: str) -> str:
        """The text of the first element ``selector`` matches, once there is one."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.remote.webdriver import WebDriver

        def found(d: WebDriver) -> str | bool:
            nodes = d.find_elements(By.CSS_SELECTOR, selector)
            return nodes[0].text if nodes else False

        return str(self.wait.until(found))

    def count(self, selector: str) -> int:
        """How many elements ``selector`` matches now."""
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def until_text(self, selector: str, expected: str) -> None:
        """Wait until the first element of ``selector`` reads ``expected``."""
        self.wait.until(lambda _: self.text(selector) == expected)

    def press(self, selector: str) -> None:
        """Click the element ``selector`` matches, once it is there."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.remote.webdriver import WebDriver

        def clicked(d: WebDriver) -> bool:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True

        self.wait.until(clicked)

    def type(self, selector: str, text: str) -> None:
        """Type into an input."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, selector).send_keys(text)

    def confirm(self, selector: str) -> str:
        """Click an action button twice (arm, then confirm); the label it asked with."""
        self.press(selector)
        label = self.text(selector + ".armed")
        self.press(selector + ".armed")
        return label


def drive(url: str, screenshot: Path) -> dict[str, Any]:
    """Load the console, enter the token, roll u2i back, explain alice, take the screenshot,
    cut v2 over again: what the page showed on the way."""
    page = Browser()
    live = '.store[data-store="u2i"] .live-version'
    try:
        page.driver.get(url)
        seen: dict[str, Any] = {"before_token": page.text("#status")}
        page.type("#token", "s3cret-token")
        page.press("#token-save")
        seen["live_before"] = page.text(live)
        seen["armed_label"] = page.confirm('.store[data-store="u2i"] button.rollback')
        page.until_text(live, "v1")
        seen["action"] = page.text("#action")
        page.type("#explain-user", "alice")
        page.press("#explain-go")
        seen["reranker"] = page.text("#explain-reranker")
        seen["headers"] = page.text("#explain-table thead").split()
        seen["cells"] = page.count("#explain-table td.contrib span")
        seen["rows"] = page.count("#explain-table tbody tr")
        seen["order"] = page.text("#explain-order")
        seen["lag_rows"] = page.count("#lag tbody tr")
        seen["p50"] = page.text('[data-figure="p50"]')
        page.driver.save_screenshot(str(screenshot))
        page.confirm('.store[data-store="u2i"] tr[data-version="2"] button.cutover')
        page.until_text(live, "v2")
        seen["cutover_action"] = page.text("#action")
        log = page.driver.get_log("browser")  # type: ignore[no-untyped-call]
        seen["errors"] = [e for e in log if e["level"] == "SEVERE"]
        return seen
    finally:
        page.driver.quit()


@pytest.mark.integration
@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (make services-prereq installs them)",
)
async def test_console_rolls_back_in_a_browser(
    client: Client, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    await seed(redis, keys)
    for _ in range(3):  # some traffic for the latency panel
        assert (await client.get("/v1/recommendations/alice?k=5")).status == 200
    screenshot = tmp_path / "console.png"
    seen = await asyncio.to_thread(drive, str(client.make_url("/console")), screenshot)
    assert "admin token" in seen["before_token"]
    assert seen["live_before"] == "v2"
    assert seen["armed_label"] == "Roll back to v1?"
    assert "rolled back from v2 to v1" in seen["action"]
    assert "v2 is live (was v1)" in seen["cutover_action"]
    assert await redis.get(keys.live("u2i")) == b"2"
    assert seen["errors"] == []  # nothing failed in the page (scripts, requests)
    assert seen["reranker"] == "lightgbm:v1"
    assert set(FEATURES) <= set(seen["headers"])
    assert seen["rows"] >= 5
    assert seen["cells"] == seen["rows"] * len(FEATURES)  # a contribution per feature
    assert seen["order"].count("›") == 9  # the final order of k=10 items
    assert seen["lag_rows"] == 2
    assert seen["p50"].endswith("ms")
    assert screenshot.stat().st_size > 10_000
