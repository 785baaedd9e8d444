"""Endpoints for the platform's own components, not for operators."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable

import falcon

from ..domain_errors import DomainError, Forbidden, LimitReached, NotFound, Unavailable
from ..schemas import DOMAIN_PATTERN
from ..services import domains

log = logging.getLogger(__name__)

_REFUSALS: dict[str, type[DomainError]] = {"domain_not_bound": NotFound, "domain_not_verified": Forbidden,
                                           "certificate_budget_exhausted": LimitReached}


class DomainCheckResource:
    """Caddy's on-demand TLS `ask` URL: 200 lets Caddy get a certificate, anything else refuses.

    Not an Internet service: only a request carrying the ask secret (``?token=``, which
    the caddy role puts in the ask URL of the container hosts' Caddy) is answered; any
    other is refused (403) before the database is asked, and counted against its client
    address like a bad bearer token. Then only a custom domain of a live deployment whose
    DNS proves the claim (``active``) gets one, within the issuance budget: otherwise
    anyone pointing a name at the host could make Caddy request certificates for it (and
    burn the ACME account's rate limits).
    """

    auth_required = False
    counts_itself = True  # RateLimit counts an ask only once its secret is right (on_authorised)

    def __init__(self, secret: str | None, per_domain: int, per_hour: int,
                 on_rejected: Callable[[falcon.Request], dict[str, str]] | None = None,
                 on_authorised: Callable[[falcon.Request], None] | None = None) -> None:
        self.secret = secret.encode() if secret else None
        self.per_domain = per_domain
        self.per_hour = per_hour
        self.on_rejected = on_rejected
        self.on_authorised = on_authorised

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._authorise(req)
        domain = (req.get_param("domain") or "").lower()
        # Only a well-formed name can be bound (and a NUL must not reach PostgreSQL).
        if not re.fullmatch(DOMAIN_PATTERN, domain):
            log.warning("on-demand certificate refused: %s", json.dumps({"domain": domain, "code": "malformed"}))
            raise NotFound(f"No deployment is bound to {domain!r}", code="domain_not_bound")
        decision = domains.approve_certificate(domain, self.per_domain, self.per_hour)
        if not decision.approved:
            raise _REFUSALS[decision.code](decision.message, code=decision.code)
        resp.media = {"domain": domain, "bound": True, "verified": True}

    def _authorise(self, req: falcon.Request) -> None:
        if self.secret is None:
            raise Unavailable("The ask endpoint is not configured (BUDDO_ASK_SECRET)", code="ask_not_configured")
        given = (req.get_param("token") or "").encode()
        if hmac.compare_digest(given, self.secret):
            if self.on_authorised is not None:
                self.on_authorised(req)
            return
        # Counted first: over the limit it is a 429, and the log is not flooded either.
        headers = self.on_rejected(req) if self.on_rejected is not None else {}
        # The token is never logged: a mistyped secret must not land in a log.
        log.warning("on-demand certificate ask refused: %s", json.dumps({"code": "ask_forbidden",
                                                                          "client": req.remote_addr}))
        raise Forbidden("The ask URL's token is missing or wrong", code="ask_forbidden", headers=headers)
