"""Request id, database connection, request metrics and idempotency key middleware."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import falcon
import peewee

from .ratelimit import ENDPOINT_CLASSES, _route_key
from .services import idempotency

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
        if started is not None and not getattr(req.context, "parked", False):  # counted when it answers
            self.observe(req.method, req.uri_template, resp.status_code, time.perf_counter() - started)


def endpoint(req: falcon.Request) -> bool:
    """Whether the request is one of the API's operations (method and route)."""
    return req.uri_template is not None and _route_key(req.method, req.uri_template) in ENDPOINT_CLASSES


class Idempotency:
    """``Idempotency-Key`` on an operator's POST, PATCH, PUT and DELETE (services/idempotency.py):
    a retry gets the first answer again, marked ``Idempotent-Replayed: true``, and its resource
    is not called. Runs after authentication and the rate limit (a retry is a request: it counts)."""

    METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
    KEPT_HEADERS = ("Content-Type", "Location")

    def __init__(self, secret_key: str, max_body_bytes: int) -> None:
        self.secret_key = secret_key
        self.max_body_bytes = max_body_bytes

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        key = req.get_header("Idempotency-Key")
        principal = getattr(req.context, "principal", None)
        # Without an operator (a signed webhook keeps its own reference), nothing to key it by; a
        # method the route does not have is answered 405 as without the key.
        if key is None or req.method not in self.METHODS or principal is None or not endpoint(req):
            return
        idempotency.check_key(key)
        length = req.content_length or 0
        if length > self.max_body_bytes:
            return  # refused as too large by the resource: nothing to remember
        body = req.stream.read(length) if length else b""
        # The resource reads it as it came (falcon's bounded_stream wraps wsgi.input).
        req.env["wsgi.input"] = req.stream = io.BytesIO(body)
        found = idempotency.begin(self.secret_key, principal.operator_id, key,
                                  idempotency.fingerprint(self.secret_key, req.method, req.path, body))
        if found is not None:
            resp.status = falcon.code_to_http_status(found.status)
            resp.text = found.body
            for name, value in found.headers.items():
                resp.set_header(name, value)
            resp.set_header("Idempotent-Replayed", "true")
            resp.complete = True  # the resource is not called
            return
        req.context.idempotency = (principal.operator_id, key)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool) -> None:
        started = getattr(req.context, "idempotency", None)
        if started is None:
            return
        req.context.idempotency = None
        operator_id, key = started
        status = falcon.http_status_to_code(resp.status)
        if status >= 500 or status == 429:  # the platform failed, or a limit for now: a retry runs
            idempotency.forget(operator_id, key)
            return
        body = resp.text if resp.text is not None else (resp.data or b"").decode("utf-8", "replace")
        headers = {name: value for name in self.KEPT_HEADERS if (value := resp.get_header(name)) is not None}
        idempotency.answer(self.secret_key, operator_id, key, status, body, headers)
