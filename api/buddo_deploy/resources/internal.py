"""Endpoints for the platform's own components, not for operators."""

from __future__ import annotations

import re

import falcon

from ..errors import NotFound
from ..schemas import DOMAIN_PATTERN
from ..services.lifecycle import Lifecycle


class DomainCheckResource:
    """Caddy's on-demand TLS `ask` URL: 200 lets Caddy get a certificate, anything else refuses.

    Without it anyone pointing a domain at the host could make Caddy request
    certificates for it (and burn the ACME rate limits).
    """

    auth_required = False

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        domain = req.get_param("domain") or ""
        # Only a well-formed name can be bound (and a NUL must not reach PostgreSQL).
        if not re.fullmatch(DOMAIN_PATTERN, domain.lower()) or not self.lifecycle.custom_domain_bound(domain):
            raise NotFound(f"No deployment is bound to {domain!r}", code="domain_not_bound")
        resp.media = {"domain": domain.lower(), "bound": True}
