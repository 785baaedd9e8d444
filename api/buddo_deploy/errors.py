"""One error envelope for every failure: {"error": {"code", "message", "details", "request_id"}}."""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = falcon.HTTP_400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if code:
            self.code = code
        if status:
            self.status = status

    @staticmethod
    def handle(req: falcon.Request, resp: falcon.Response, ex: ApiError, params: Any) -> None:
        render(req, resp, ex.status, ex.code, ex.message, ex.details, ex.headers)


class BadRequest(ApiError):
    status, code = falcon.HTTP_400, "bad_request"


class Unauthorized(ApiError):
    status, code = falcon.HTTP_401, "unauthorized"


class PaymentRequired(ApiError):
    status, code = falcon.HTTP_402, "payment_required"


class Forbidden(ApiError):
    status, code = falcon.HTTP_403, "forbidden"


class NotFound(ApiError):
    status, code = falcon.HTTP_404, "not_found"


class Unprocessable(ApiError):
    status, code = falcon.HTTP_422, "validation_failed"

    @classmethod
    def for_field(cls, field: str, message: str, code: str = "validation_failed") -> Unprocessable:
        """One field's error, in the shape pydantic's validation errors are reported in."""
        return cls(f"{field}: {message}", code=code, details=[{"field": field, "message": message}])


class TooManyRequests(ApiError):
    status, code = falcon.HTTP_429, "rate_limited"


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
    app.add_error_handler(ApiError, ApiError.handle)
