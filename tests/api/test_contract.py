"""The API against its own contract: schemathesis (every check) drives a running API on the real
broker and Redis from ``/openapi.json``; and the parts of the contract schemathesis cannot see:
request ids in log lines, the access log, gzip, CORS, problem documents."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.api.keys import SETTINGS
from tandem.contracts import logctx
from tandem.contracts.settings import Settings
from tandem.store.keys import Keys
from tests.api.conftest import put_version

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SCHEMATHESIS_TIMEOUT_S = 150
MAX_EXAMPLES = 25
HOOKS = "tests.api.schemathesis_hooks"
PROBLEM = "application/problem+json"


@pytest.fixture
async def live_api(
    api_settings: Settings, redis: Redis, keys: Keys
) -> AsyncIterator[tuple[str, Settings]]:
    """An API on a real port with live versions of every store (and a backup of u2i)."""
    for version in (1, 2):
        await put_version(redis, keys, "u2i", version, {"alice": [("i1", 0.9), ("i2", 0.5)]})
    await put_version(redis, keys, "i2i", 1, {"i1": [("i3", 0.7)]})
    await put_version(redis, keys, "popular", 1, {"global": [("p1", 0.9), ("p2", 0.8)]})
    server = TestServer(create_app(api_settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", api_settings
    finally:
        await server.close()


async def test_schemathesis_finds_nothing(live_api: tuple[str, Settings], tmp_path: Path) -> None:
    url, settings = live_api
    assert settings.admin_token is not None
    token = settings.admin_token.get_secret_value()
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--checks=all",
        f"--max-examples={MAX_EXAMPLES}",
        "--seed=20261130",
        "--phases=examples,coverage,fuzzing",
        "--workers=1",  # CPython 3.11's ast.parse is not thread-safe (hypothesis calls it)
        "--request-timeout=10",
        "--suppress-health-check=all",
        f"--header=Authorization: Bearer {token}",
        "--output-truncate=false",
        cwd=tmp_path,  # its report folder goes there
        env={**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), SCHEMATHESIS_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"schemathesis did not finish within {SCHEMATHESIS_TIMEOUT_S} s")
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
    assert "No issues found" in report or "passed" in report, report


def test_event_clock_window() -> None:
    """The rule of ``ts`` the schema cannot state (the hook keeps schemathesis inside it)."""
    from tandem.contracts.exceptions import ValidationError
    from tandem.contracts.schemas import parse_ts_ms

    now_ms = 1_790_000_000_000
    assert parse_ts_ms(now_ms + 299_000, now_ms) == now_ms + 299_000
    assert parse_ts_ms(float(now_ms), now_ms) == now_ms  # an integral JSON number is an integer
    for too_late in (now_ms + 301_000, "2099-01-01T00:00:00Z"):
        with pytest.raises(ValidationError, match="future"):
            parse_ts_ms(too_late, now_ms)
    with pytest.raises(ValidationError, match="1970"):
        parse_ts_ms("1970-01-01T00:30:00+01:00", now_ms)


async def test_request_id_is_echoed_and_in_every_log_line(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(logctx.RequestIdFilter())  # as logctx.install does for a handler
    caplog.set_level(logging.INFO)
    response = await client.get("/v1/recommendations/nobody", headers={"X-Request-ID": "req-42"})
    assert response.headers["X-Request-ID"] == "req-42"
    mine = [r for r in caplog.records if getattr(r, "request_id", None) == "req-42"]
    access = [r for r in mine if r.name == "tandem.access"]
    assert len(access) == 1
    assert access[0].getMessage().startswith("GET /v1/recommendations/nobody ")
    assert (access[0].__dict__["status"], access[0].__dict__["method"]) == (response.status, "GET")
    assert isinstance(access[0].__dict__["duration_ms"], float)
    await client.get("/v1/recommendations/a%0Aforged", headers={"X-Request-ID": "req-43"})
    lines = [r.getMessage() for r in caplog.records if getattr(r, "request_id", None) == "req-43"]
    assert any(line.startswith("GET /v1/recommendations/a%0Aforged ") for line in lines), lines
    assert not any("\n" in line for line in lines)
    made = (await client.get("/healthz")).headers["X-Request-ID"]
    assert len(made) == 32
    assert made != (await client.get("/healthz")).headers["X-Request-ID"]
    for bad in ("x" * 129, "has space", "semi;colon"):
        response = await client.get("/healthz", headers={"X-Request-ID": bad})
        body = orjson.loads(await response.read())
        assert (response.status, body["field"]) == (400, "X-Request-ID")
        assert response.headers["X-Request-ID"] != bad  # never echoed back unchecked


async def test_a_log_line_inside_a_handler_carries_the_request_id(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tandem.api import handlers

    async def noisy(request: web.Request) -> web.Response:
        logging.getLogger("tandem.api.handlers").warning("inside the handler")
        return web.json_response({"status": "ok"})

    caplog.handler.addFilter(logctx.RequestIdFilter())
    monkeypatch.setattr(handlers, "healthz", noisy)
    async with TestClient(TestServer(create_app(client.app[SETTINGS]))) as other:
        await other.get("/healthz", headers={"X-Request-ID": "inner-1"})
    inner = [r for r in caplog.records if r.getMessage() == "inside the handler"]
    assert [getattr(r, "request_id", None) for r in inner] == ["inner-1"]


async def test_errors_are_problem_documents(client: Client) -> None:
    cases = [
        ("GET", "/nowhere", 404, "about:blank", None),
        ("DELETE", "/v1/events", 405, "about:blank", None),
        ("GET", "/v1/recommendations/alice?k=0", 400, "urn:tandem:problem:bad-request", "k"),
        ("GET", "/v1/stores", 401, "urn:tandem:problem:unauthorized", None),
    ]
    for method, path, status, kind, field in cases:
        response = await client.request(method, path)
        assert response.status == status, path
        assert response.content_type == PROBLEM
        body = orjson.loads(await response.read())
        assert (body["type"], body["status"], body.get("field")) == (kind, status, field)
        assert body["title"]
        assert body["detail"]
        assert body["request_id"] == response.headers["X-Request-ID"]
    assert "POST" in (await client.delete("/v1/events")).headers["Allow"]
    assert "Bearer" in (await client.get("/v1/stores")).headers["WWW-Authenticate"]
    event = {"user_id": "u1", "item_id": "i1", "event_type": "view", "context": {"a": [1]}}
    response = await client.post("/v1/events", data=orjson.dumps(event))
    body = orjson.loads(await response.read())
    assert (response.status, body["field"], "index" in body) == (400, "context.a", False)
    response = await client.post("/v1/events", data=io.BytesIO(b"[" + b"1," * 600_000 + b"1]"))
    assert (response.status, response.content_type) == (413, PROBLEM)


async def test_gzip_when_asked(client: Client, redis: Redis, keys: Keys) -> None:
    await put_version(
        redis, keys, "popular", 1, {"global": [(f"p{n}", 1 - n / 100) for n in range(80)]}
    )
    path = "/v1/recommendations/alice?k=60"
    plain = await client.get(path, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert len(orjson.loads(await plain.read())["items"]) == 60
    for asked in ("gzip", "deflate, gzip;q=0.5", "*"):
        response = await client.get(path, headers={"Accept-Encoding": asked}, auto_decompress=False)
        assert response.headers["Content-Encoding"] == "gzip", asked
        assert len(orjson.loads(gzip.decompress(await response.read()))["items"]) == 60
    refused = await client.get(path, headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    assert "Accept-Encoding" in refused.headers["Vary"]


async def test_cors_for_the_configured_origins(api_settings: Settings) -> None:
    shop = "https://shop.example"
    settings = api_settings.model_copy(update={"cors_origins": (shop,)})
    async with TestClient(TestServer(create_app(settings))) as client:
        preflight = {"Origin": shop, "Access-Control-Request-Method": "POST"}
        response = await client.options("/v1/events", headers=preflight)
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == shop
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert "X-Request-ID" in response.headers["Access-Control-Allow-Headers"]
        simple = await client.get("/healthz", headers={"Origin": shop})
        assert simple.headers["Access-Control-Allow-Origin"] == shop
        assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]
        assert "Origin" in simple.headers["Vary"]
        stranger = {"Origin": "https://elsewhere.example"}
        assert (
            "Access-Control-Allow-Origin"
            not in (await client.get("/healthz", headers=stranger)).headers
        )
        refused = await client.options("/v1/events", headers={**preflight, **stranger})
        assert refused.status == 405
        wrong_method = await client.options(
            "/v1/events", headers={**preflight, "Access-Control-Request-Method": "PUT"}
        )
        assert wrong_method.status == 405


def test_origins_setting_is_checked(api_settings: Settings) -> None:
    from tandem.contracts.exceptions import ConfigError

    with pytest.raises(ConfigError, match="TANDEM_CORS_ORIGINS"):
        Settings.load(cors_origins=("shop.example/path",))
    assert Settings.load(cors_origins=("*", "http://localhost:3000")).cors_origins[0] == "*"


async def test_a_log_line_from_the_rerank_thread_carries_the_request_id(
    client: Client, redis: Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """The model loads in a worker thread; what it logs belongs to the request all the same."""
    await put_version(redis, keys, "u2i", 7, {"carol": [("i1", 0.9)]})
    await redis.set(keys.model("u2i", 7), b"not a LightGBM model")
    caplog.handler.addFilter(logctx.RequestIdFilter())
    response = await client.get("/v1/recommendations/carol", headers={"X-Request-ID": "thread-1"})
    assert response.status == 200
    refused = [r for r in caplog.records if "does not load" in r.getMessage()]
    assert refused
    assert (refused[0].threadName or "").startswith("rerank")
    assert [getattr(r, "request_id", None) for r in refused] == ["thread-1"]


def test_install_puts_the_filter_on_each_handler_once() -> None:
    logger = logging.getLogger("tandem.test.logctx")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    logger.addHandler(handler)
    try:
        logctx.install(logger)
        logctx.install(logger)
        assert len(handler.filters) == 1
        token = logctx.REQUEST_ID.set("abc")
        logger.warning("inside")
        logctx.REQUEST_ID.reset(token)
        logger.warning("outside")
        assert handler.stream.getvalue().splitlines() == ["abc inside", "None outside"]
    finally:
        logger.removeHandler(handler)
