"""A thin Python client of the tandem API, sync (:class:`Client`) and async (:class:`AsyncClient`).

Events get their ``event_id`` (and ``ts``) here, before the first attempt, so a retry sends the
same ids and the stream worker counts each event once however often it arrives. A request is
retried only when that is safe and may help: a connection error, a timeout, 502/503/504 (after
``Retry-After`` when given) or 429. After a 503 on ``POST /v1/events``, only the events the
answer does not list as accepted are sent again. A 4xx answer is raised at once as
:class:`RequestRefused` with the server's message and the field at fault.

    with Client("http://127.0.0.1:8080") as api:
        api.send_events([{"user_id": "u1", "item_id": "i9", "event_type": "click"}])
        answer = api.recommendations("u1", k=10, device="mobile")
"""

from tandem.client.aio import AsyncClient
from tandem.client.core import (
    ApiUnavailable,
    ClientError,
    RequestRefused,
    RetryPolicy,
)
from tandem.client.sync import Client

__all__ = [
    "ApiUnavailable",
    "AsyncClient",
    "Client",
    "ClientError",
    "RequestRefused",
    "RetryPolicy",
]
