"""GET /metrics: Prometheus text format, for scrapers on an allowed network only (no token)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import falcon

from ..domain_errors import Forbidden

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_allowed(remote_addr: str | None, allow: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack listener
    return any(address in network for network in allow)


class MetricsResource:
    # Scrapers carry no operator token; the allow-list (BUDDO_METRICS_ALLOW) guards this.
    auth_required = False

    def __init__(self, render: Callable[[], tuple[bytes, str]], allow: Sequence[Network]) -> None:
        self.render = render
        self.allow = tuple(allow)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # The peer address of the connection: a forwarded-for header is the client's to forge.
        if not client_allowed(req.remote_addr, self.allow):
            raise Forbidden(f"Metrics are not served to {req.remote_addr}", code="forbidden",
                            details={"setting": "BUDDO_METRICS_ALLOW"})
        body, content_type = self.render()
        resp.data = body
        resp.content_type = content_type
