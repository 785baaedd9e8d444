"""What can go wrong, said by meaning: the services, auth and the limits raise these.

No HTTP here: which status line and default code each kind is answered with is decided
in one place, the table in ``errors.py``. A kind is chosen for what happened (the input
is invalid, a limit is reached), never for the status it will be answered with.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A failure the caller is told about: a message, a machine-readable code, details, and
    the headers the answer must carry (``Retry-After``, ``WWW-Authenticate``).

    ``code`` None means the kind's default code (the table in ``errors.py``). Raise a kind
    (a subclass), not this class.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
        self.headers = headers or {}


class Malformed(DomainError):
    """The request cannot be read at all (not JSON, not an object)."""


class Invalid(DomainError):
    """The request was read but asks for something not allowed: a field's value, or an action
    the deployment's state does not allow."""

    @classmethod
    def for_field(cls, field: str, message: str, code: str | None = None) -> Invalid:
        """One field's error, in the shape pydantic's validation errors are reported in."""
        return cls(f"{field}: {message}", code=code, details=[{"field": field, "message": message}])


class TooLarge(DomainError):
    """The request body is bigger than the API reads."""


class Unauthenticated(DomainError):
    """No credentials, or ones that prove nothing (a bad token, a wrong signature)."""


class Forbidden(DomainError):
    """The caller is known but may not do this (scope, owner, address allow-list)."""


class PaymentRequired(DomainError):
    """The account's balance or debt does not allow it."""


class NotFound(DomainError):
    """What the request names does not exist (or is not the caller's to know of)."""


class Conflict(DomainError):
    """The request disagrees with what happened meanwhile or before (a concurrent change, a
    reused reference)."""


class LimitReached(DomainError):
    """A limit on the caller is reached: a request rate, requests in flight, deployments per
    tier or account, certificates per hour. Waiting or freeing some lets it through."""


class Unavailable(DomainError):
    """The platform cannot do it now: no capacity, or a feature that is not configured."""


class UpstreamFailed(DomainError):
    """Something the platform depends on (a host, a run) failed to give the answer."""
