"""Per caller, per endpoint rate limits, counted in the database so they hold across processes.

Fixed one-minute windows (configurable): one upsert per request. Headers follow the
IETF RateLimit header fields draft (`RateLimit-Limit/-Remaining/-Reset`) plus
`Retry-After` on 429.
"""

from __future__ import annotations

import random
import time
from typing import Any

import falcon

from .errors import TooManyRequests
from .models import database_proxy
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
    ("GET", "/api/deploy/apps/{deployment_id}/jobs/{job_id}"): "read",
}


def _route_key(method: str, template: str) -> tuple[str, str]:
    # Falcon reports the template with its converter, e.g. {deployment_id:uuid}.
    return method, template.replace("{deployment_id:uuid}", "{deployment_id}")


class RateLimit:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        self.window = settings.rate_limit_window_s
        self.limits = {"read": settings.rate_limit_read, "write": settings.rate_limit_write}

    def _hit(self, key: str, window_start: int) -> int:
        db = database_proxy.obj
        param = db.param
        cursor = db.execute_sql(
            "INSERT INTO rate_limit_counters (key, window_start, count) "
            f"VALUES ({param}, {param}, 1) ON CONFLICT (key, window_start) "
            "DO UPDATE SET count = rate_limit_counters.count + 1 RETURNING count",
            (key, window_start),
        )
        count = int(cursor.fetchone()[0])
        if random.random() < 0.01:  # noqa: S311 - housekeeping, not security
            db.execute_sql(
                f"DELETE FROM rate_limit_counters WHERE window_start < {param}", (window_start - self.window,)
            )
        return count

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        principal = getattr(req.context, "principal", None)
        if not self.enabled or principal is None or req.uri_template is None:
            return
        method, route = _route_key(req.method, req.uri_template)
        limit_class = ENDPOINT_CLASSES.get((method, route))
        if limit_class is None:
            return
        limit = self.limits[limit_class]
        now = time.time()
        window_start = int(now // self.window * self.window)
        reset = max(1, int(window_start + self.window - now + 0.999))
        count = self._hit(f"{principal.operator_id}|{method} {route}", window_start)
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - count)),
            "RateLimit-Reset": str(reset),
        }
        if count > limit:
            raise TooManyRequests(
                f"Rate limit of {limit} requests per {self.window}s exceeded for {method} {route}",
                code="rate_limited",
                details={"limit": limit, "window_seconds": self.window, "retry_after": reset},
                headers=headers | {"Retry-After": str(reset)},
            )
        resp.set_headers(headers)
