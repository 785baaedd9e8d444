"""Request id and database connection middleware."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import falcon
import peewee

# fullmatch: `$` would let a trailing newline into the echoed header.
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


class RequestId:
    """Tag every request with an id (the caller's, if sane) and echo it back."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        incoming = req.get_header("X-Request-Id")
        req.context.request_id = incoming if incoming and _SAFE_ID.fullmatch(incoming) else uuid.uuid4().hex
        resp.set_header("X-Request-Id", req.context.request_id)


class Database:
    """One connection per request thread, opened lazily (after gunicorn forks) and reused.

    peewee keeps the connection and its transaction state per thread (``thread_safe``,
    its default), so the gthread worker's threads never share a connection or a
    transaction; on PostgreSQL each gunicorn worker holds up to ``--threads`` connections.
    """

    def __init__(self, db: peewee.Database) -> None:
        self.db = db

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.db.connect(reuse_if_open=True)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool) -> None:
        if self.db.is_closed():
            return
        if self.db.in_transaction():  # only after an unexpected error: never leak a transaction
            self.db.rollback()
        if not succeeded and not self.db.is_connection_usable():
            self.db.close()


class RequestMetrics:
    """Count every request and its latency by route template and status (metrics.observe_request)."""

    def __init__(self, observe: Callable[[str, str | None, int, float], None]) -> None:
        self.observe = observe

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        if started is not None:
            self.observe(req.method, req.uri_template, resp.status_code, time.perf_counter() - started)
