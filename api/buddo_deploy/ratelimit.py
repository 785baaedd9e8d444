"""Per caller, per endpoint rate limits, counted in the database so they hold across processes;
and per operator, how many expensive reads may be in flight at once in this process.

Fixed one-minute windows (configurable): one upsert per request. Headers follow the
IETF RateLimit header fields draft (`RateLimit-Limit/-Remaining/-Reset`) plus
`Retry-After` on 429.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import falcon

from .domain_errors import LimitReached
from .models import RateLimitCounter
from .settings import Settings

# The contract's quick-reference table: (method, route) -> read (30/min) or write (10/min).
ENDPOINT_CLASSES: dict[tuple[str, str], str] = {
    ("GET", "/api/deploy/tiers"): "read",
    ("POST", "/api/deploy/apps"): "write",
    ("GET", "/api/deploy/apps"): "read",
    ("GET", "/api/deploy/apps/{deployment_id}"): "read",
    ("GET", "/api/deploy/apps/{deployment_id}/status"): "read",
    ("GET", "/api/deploy/apps/{deployment_id}/logs"): "read",
    ("POST", "/api/deploy/apps/{deployment_id}/restart"): "write",
    ("POST", "/api/deploy/apps/{deployment_id}/stop"): "write",
    ("DELETE", "/api/deploy/apps/{deployment_id}"): "write",
    ("PATCH", "/api/deploy/apps/{deployment_id}"): "write",
    ("GET", "/api/deploy/billing"): "read",
    ("GET", "/api/deploy/apps/{deployment_id}/releases"): "read",
    ("POST", "/api/deploy/apps/{deployment_id}/rollback"): "write",
    ("GET", "/api/deploy/apps/{deployment_id}/output"): "read",
    ("POST", "/api/deploy/apps/{deployment_id}/runs"): "write",
    ("GET", "/api/deploy/apps/{deployment_id}/runs"): "read",
    ("GET", "/api/deploy/apps/{deployment_id}/runs/{run_id}"): "read",
    # Signed, not token-authenticated: counted per client address.
    ("POST", "/api/deploy/billing/payments"): "webhook",
    ("GET", "/api/deploy/apps/{deployment_id}/jobs/{job_id}"): "read",
    ("GET", "/api/deploy/registry-logins"): "read",
    ("PUT", "/api/deploy/registry-logins/{registry}"): "write",
    ("DELETE", "/api/deploy/registry-logins/{registry}"): "write",
    ("GET", "/api/deploy/webhooks"): "read",
    ("POST", "/api/deploy/webhooks"): "write",
    ("GET", "/api/deploy/webhooks/{webhook_id}"): "read",
    ("PATCH", "/api/deploy/webhooks/{webhook_id}"): "write",
    ("DELETE", "/api/deploy/webhooks/{webhook_id}"): "write",
    ("GET", "/api/deploy/webhooks/{webhook_id}/deliveries"): "read",
    # Caddy's on-demand TLS ask (a secret in its URL, no token): counted per client address, and
    # only once the secret is right (DomainCheckResource): a flood of asks without it, from
    # Caddy's address or behind one proxy with Caddy, never uses up Caddy's own asks.
    ("GET", "/api/deploy/internal/domain-check"): "ask",
}
# Classes of requests without a bearer token, counted per client address.
ADDRESS_CLASSES = frozenset({"webhook", "ask"})


# Reads that cost more than a row or two (listings, the deploy log, the app's output): one
# operator may have at most BUDDO_OPERATOR_CONCURRENCY of them in flight in one API process.
EXPENSIVE_READS: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/api/deploy/apps/{deployment_id}/output"),
    ("GET", "/api/deploy/apps/{deployment_id}/logs"),
    ("GET", "/api/deploy/apps/{deployment_id}/jobs/{job_id}"),
    ("GET", "/api/deploy/apps/{deployment_id}/releases"),
})
# What a 429 for too many reads in flight says to wait: they are short.
IN_FLIGHT_RETRY_AFTER_S = 1


_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")


def _route_key(method: str, template: str) -> tuple[str, str]:
    # Falcon reports the template with its converters, e.g. {deployment_id:uuid}.
    return method, _CONVERTER.sub(r"{\1}", template)


def client_address(req: falcon.Request, trusted_proxies: frozenset[str]) -> str:
    """The socket peer; behind a trusted proxy, the nearest X-Forwarded-For hop it did not add.

    Only the proxies' own entries can be believed: anything left of them the client wrote.
    """
    peer = req.remote_addr or "unknown"
    if peer not in trusted_proxies:
        return peer
    hops = [hop.strip() for hop in (req.get_header("X-Forwarded-For") or "").split(",") if hop.strip()]
    return next((hop for hop in reversed(hops) if hop not in trusted_proxies), peer)


class RateLimit:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        self.window = settings.rate_limit_window_s
        self.limits = {"read": settings.rate_limit_read, "write": settings.rate_limit_write,
                       "webhook": settings.rate_limit_webhook, "ask": settings.rate_limit_ask}
        self.anonymous_limit = settings.rate_limit_anonymous
        self.trusted_proxies = frozenset(settings.trusted_proxies)

    def _window(self) -> tuple[int, int]:
        now = time.time()
        window_start = int(now // self.window * self.window)
        return window_start, max(1, int(window_start + self.window - now + 0.999))

    def _headers(self, limit: int, count: int, reset: int) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - count)),
            "RateLimit-Reset": str(reset),
        }

    def rejected(self, req: falcon.Request) -> dict[str, str]:
        """Count a request that failed authentication (a bad token, a wrong ask secret) against
        its client address.

        Without this a flood of bad tokens costs a signature check each and is never
        slowed down. Returns the headers for the 401/403; raises 429 once over the limit.
        """
        if not self.enabled:
            return {}
        limit = self.anonymous_limit
        address = client_address(req, self.trusted_proxies)
        return self._counted(f"anonymous|{address}", limit,
                             f"Too many unauthenticated requests from {address}: {limit} per {self.window}s")

    def _counted(self, key: str, limit: int, message: str) -> dict[str, str]:
        """One more request of ``key`` in this window: its RateLimit headers, or 429 over ``limit``."""
        window_start, reset = self._window()
        count = self._hit(key, window_start)
        headers = self._headers(limit, count, reset)
        if count > limit:
            raise LimitReached(message, code="rate_limited",
                               details={"limit": limit, "window_seconds": self.window, "retry_after": reset},
                               headers=headers | {"Retry-After": str(reset)})
        return headers

    def _hit(self, key: str, window_start: int) -> int:
        return RateLimitCounter.hit(key, window_start)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        if getattr(resource, "counts_itself", False):  # e.g. the ask endpoint: after its secret is checked
            return
        if req.env.get("buddo.resumed"):  # a parked request answering now: counted when it arrived
            return
        self.count(req, resp)

    def count(self, req: falcon.Request, resp: falcon.Response | None = None) -> None:
        """Count the request against its caller (operator, or client address for ADDRESS_CLASSES);
        429 over the limit of its class."""
        principal = getattr(req.context, "principal", None)
        if not self.enabled or req.uri_template is None:
            return
        method, route = _route_key(req.method, req.uri_template)
        limit_class = ENDPOINT_CLASSES.get((method, route))
        if limit_class is None or (principal is None and limit_class not in ADDRESS_CLASSES):
            return
        caller = (principal.operator_id if principal is not None
                  else f"addr:{client_address(req, self.trusted_proxies)}")
        limit = self.limits[limit_class]
        headers = self._counted(f"{caller}|{method} {route}", limit,
                                f"Rate limit of {limit} requests per {self.window}s exceeded for {method} {route}")
        if resp is not None:
            resp.set_headers(headers)


class ConcurrencyLimit:
    """At most ``limit`` expensive reads (EXPENSIVE_READS) in flight per operator, across the
    threads of this process; the next is 429 at once (no database write: it is refused before
    RateLimit counts it). Across processes the rate limit (RateLimit) still holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        principal = getattr(req.context, "principal", None)
        if principal is None or req.uri_template is None:
            return
        if _route_key(req.method, req.uri_template) not in EXPENSIVE_READS:
            return
        operator = principal.operator_id
        with self._lock:
            count = self._in_flight.get(operator, 0)
            if count >= self.limit:
                raise LimitReached(
                    f"Too many requests in flight: at most {self.limit} listings or output reads at once",
                    code="too_many_in_flight",
                    details={"limit": self.limit, "retry_after": IN_FLIGHT_RETRY_AFTER_S},
                    headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
                )
            self._in_flight[operator] = count + 1
        req.context.in_flight_of = operator

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool) -> None:
        operator = getattr(req.context, "in_flight_of", None)
        if operator is None:
            return
        req.context.in_flight_of = None
        with self._lock:
            left = self._in_flight[operator] - 1
            if left:
                self._in_flight[operator] = left
            else:
                del self._in_flight[operator]

    def in_flight(self, operator: str) -> int:
        with self._lock:
            return self._in_flight.get(operator, 0)
