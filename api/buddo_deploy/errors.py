"""Domain errors mapped to HTTP in one place, and one error envelope for every failure:
{"error": {"code", "message", "details", "request_id"}}."""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

import falcon

from .domain_errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    LimitReached,
    Malformed,
    NotFound,
    PaymentRequired,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UpstreamFailed,
)

log = logging.getLogger(__name__)


class Http(NamedTuple):
    status: str
    code: str  # when the error names none


# The one table: how each kind of domain error is answered. Every kind has exactly one row.
HTTP: dict[type[DomainError], Http] = {
    Malformed: Http(falcon.HTTP_400, "bad_request"),
    Unauthenticated: Http(falcon.HTTP_401, "unauthorized"),
    PaymentRequired: Http(falcon.HTTP_402, "payment_required"),
    Forbidden: Http(falcon.HTTP_403, "forbidden"),
    NotFound: Http(falcon.HTTP_404, "not_found"),
    Conflict: Http(falcon.HTTP_409, "conflict"),
    TooLarge: Http(falcon.HTTP_413, "payload_too_large"),
    Invalid: Http(falcon.HTTP_422, "validation_failed"),
    LimitReached: Http(falcon.HTTP_429, "rate_limited"),
    UpstreamFailed: Http(falcon.HTTP_502, "upstream_failed"),
    Unavailable: Http(falcon.HTTP_503, "unavailable"),
}


def http_for(kind: type[DomainError]) -> Http | None:
    """The row of the kind, or of the kind a service's own subclass refines (None: a bare DomainError)."""
    return next((HTTP[k] for k in kind.__mro__ if k in HTTP), None)


def handle_domain_error(req: falcon.Request, resp: falcon.Response, ex: DomainError, params: Any) -> None:
    http = http_for(type(ex))
    if http is None:
        handle_unexpected(req, resp, ex, params)
        return
    render(req, resp, http.status, ex.code or http.code, ex.message, ex.details, ex.headers)


def render(
    req: falcon.Request,
    resp: falcon.Response,
    status: str,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> None:
    request_id = getattr(req.context, "request_id", None)
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(
        {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
    )
    for name, value in (headers or {}).items():
        resp.set_header(name, value)


def _code_for(error: falcon.HTTPError) -> str:
    return {
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }.get(error.status_code, "bad_request")


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: Any) -> None:
    """Falcon's own errors (unknown route, bad method...) in our envelope."""
    message = ex.title or "Error"
    if ex.description:
        message = f"{message}: {ex.description}"
    render(req, resp, str(ex.status), _code_for(ex), message, None, dict(ex.headers or {}))


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    """A 500 that says nothing about the exception; the log has it with the request id."""
    log.exception("unhandled error in request %s", getattr(req.context, "request_id", "?"))
    render(req, resp, falcon.HTTP_500, "internal_error", "Internal server error")


def install(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    # Falcon picks the most specific handler, so the order here does not matter.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(DomainError, handle_domain_error)
