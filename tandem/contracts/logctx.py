"""The request a log line belongs to: a context variable the API sets for each request, and a
``logging.Filter`` that copies it onto every record as ``record.request_id`` (None outside a
request), where a formatter (text or JSON) can show it."""

from __future__ import annotations

import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("tandem_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` from :data:`REQUEST_ID`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (the root logger by default) that lacks it:
    a handler filter sees the records of every logger that propagates to it."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
