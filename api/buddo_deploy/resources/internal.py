"""Endpoints for the platform's own components, not for operators."""

from __future__ import annotations

import json
import logging
import re

import falcon

from ..errors import ApiError, NotFound
from ..schemas import DOMAIN_PATTERN
from ..services import domains

log = logging.getLogger(__name__)

_REFUSALS = {"domain_not_bound": "404 Not Found", "domain_not_verified": "403 Forbidden",
             "certificate_budget_exhausted": "429 Too Many Requests"}


class DomainCheckResource:
    """Caddy's on-demand TLS `ask` URL: 200 lets Caddy get a certificate, anything else refuses.

    Only a custom domain of a live deployment whose DNS points at the app
    (``active``) gets one, within the issuance budget: otherwise anyone pointing a
    name at the host could make Caddy request certificates for it (and burn the
    ACME account's rate limits).
    """

    auth_required = False

    def __init__(self, per_domain: int, per_hour: int) -> None:
        self.per_domain = per_domain
        self.per_hour = per_hour

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        domain = (req.get_param("domain") or "").lower()
        # Only a well-formed name can be bound (and a NUL must not reach PostgreSQL).
        if not re.fullmatch(DOMAIN_PATTERN, domain):
            log.warning("on-demand certificate refused: %s", json.dumps({"domain": domain, "code": "malformed"}))
            raise NotFound(f"No deployment is bound to {domain!r}", code="domain_not_bound")
        decision = domains.approve_certificate(domain, self.per_domain, self.per_hour)
        if not decision.approved:
            raise ApiError(decision.message, code=decision.code, status=_REFUSALS[decision.code])
        resp.media = {"domain": domain, "bound": True, "verified": True}
