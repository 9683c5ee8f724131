"""The blocking client (standard-library HTTP; no event loop needed)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

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


class Client:
    """The tandem API at ``base_url`` (e.g. ``http://127.0.0.1:8080``); ``token`` is sent as
    ``Authorization: Bearer`` (the admin endpoints need it)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()

    def recommendations(self, user_id: str, k: int = 20, device: str | None = None) -> Any:
        """``GET /v1/recommendations/{user_id}``: the answer as a dict."""
        return self._run(call_plan(self._retry, "GET", recommendations_path(user_id, k, device)))

    def send_events(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """``POST /v1/events``; the events' ids once the broker has every one. Raises
        :class:`~tandem.client.ApiUnavailable` with the ids still unconfirmed when retries run
        out, :class:`~tandem.client.RequestRefused` at once for an invalid event."""
        ids: list[str] = self._run(events_plan(self._retry, events))
        return ids

    def get(self, path: str) -> Any:
        """Any other GET endpoint (e.g. ``/v1/stores``), with retries."""
        return self._run(call_plan(self._retry, "GET", path))

    def _run(self, plan: Plan) -> Any:
        step = next(plan)
        while True:
            try:
                if isinstance(step, Wait):
                    time.sleep(step.seconds)
                    step = plan.send(None)
                else:
                    step = plan.send(self._send(step))
            except StopIteration as done:
                return done.value

    def _send(self, attempt: Attempt) -> Answer:
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if attempt.payload is not None:
            data = orjson.dumps(attempt.payload)
            headers["Content-Type"] = "application/json"
        url = self._base + attempt.path
        request = urllib.request.Request(url, data, headers, method=attempt.method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as reply:
                return reply.status, decode(reply.read()), None
        except urllib.error.HTTPError as e:
            return e.code, decode(e.read()), e.headers.get("Retry-After")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            return None, str(getattr(e, "reason", e)), None

    def close(self) -> None:
        """Nothing to release: one connection per request."""

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
