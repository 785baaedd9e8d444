"""Bearer JWT authentication (RFC 6750 errors) and the `deploy:manage` scope check."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon
import jwt

from .domain_errors import Forbidden, Unauthenticated
from .settings import Settings

REQUIRED_SCOPE = "deploy:manage"
REALM = "buddo-deploy"
# A JWKS that does not answer within this fails the request's token (401), not the worker.
JWKS_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    operator_id: str
    client_id: str
    scopes: frozenset[str]


def _challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    scp = claims.get("scp")
    found: set[str] = set()
    if isinstance(scope, str):
        found.update(scope.split())
    if isinstance(scp, list):
        found.update(item for item in scp if isinstance(item, str))
    elif isinstance(scp, str):
        found.update(scp.split())
    return frozenset(found)


class TokenVerifier:
    """Verifies tokens, remembering verified ones until they expire.

    Pollers send the same token many times a minute; a signature check costs more
    than the rest of a status request, so a verified token is kept (bounded LRU)
    with its expiry, and an expired one is verified again (and refused).
    """

    CACHE_SIZE = 4096
    # Kept at most this long, whatever its exp says (an exp of 10**400 is still an int).
    CACHE_TTL_S = 3600

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks = (jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, timeout=JWKS_TIMEOUT_S)
                      if settings.jwt_jwks_url else None)
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        with self._lock:
            hit = self._verified.get(token)
            if hit is not None and hit[1] > time.time():
                self._verified.move_to_end(token)
                return hit[0]
        principal, expires_at = self._verify(token)
        with self._lock:
            self._verified[token] = (principal, expires_at)
            while len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)
        return principal

    def _key(self, token: str) -> tuple[Any, str]:
        """The key that may verify ``token``, and the one algorithm it may be verified with.

        The header's ``alg`` must be configured (BUDDO_JWT_ALGORITHMS); with a JWKS it must
        also be the algorithm of the key its ``kid`` names (the JWK's ``alg``, else its
        type's: RS256 for RSA, ES256/384/512 by curve, EdDSA), so a public key never
        serves as an HMAC secret, nor an RSA key for another family.
        """
        alg = jwt.get_unverified_header(token).get("alg")
        if not isinstance(alg, str) or alg not in self.settings.jwt_algorithms:
            raise jwt.InvalidAlgorithmError("algorithm not allowed")
        if self._jwks is None:
            return self.settings.jwt_secret, alg
        signing_key = self._jwks.get_signing_key_from_jwt(token)
        if signing_key.algorithm_name != alg:
            raise jwt.InvalidAlgorithmError("algorithm not the key's")
        return signing_key.key, alg

    def _verify(self, token: str) -> tuple[Principal, float]:
        audience, issuer = self.settings.jwt_audience, self.settings.jwt_issuer
        required = ["exp", "sub", *(["aud"] if audience else []), *(["iss"] if issuer else [])]
        options = {"require": required, "verify_aud": audience is not None}
        try:
            key, alg = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                options=options,  # type: ignore[arg-type]
                leeway=30,
            )
        except jwt.ExpiredSignatureError as exc:
            raise self._invalid("The access token expired") from exc
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("cannot fetch the JWKS %s: %s", self.settings.jwt_jwks_url, exc)
            raise self._invalid("The access token could not be checked (key set unavailable)") from exc
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise self._invalid(f"The access token is invalid ({type(exc).__name__})") from exc
        except Exception as exc:  # what else a crafted token makes the library raise: still the token's fault
            log.info("token refused: %s: %s", type(exc).__name__, exc)
            raise self._invalid("The access token is invalid") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise self._invalid("The access token has no subject")
        client_id = claims.get("client_id")
        principal = Principal(
            operator_id=sub,
            client_id=client_id if isinstance(client_id, str) and client_id else sub,
            scopes=_scopes(claims),
        )
        return principal, float(min(int(claims["exp"]), int(time.time()) + self.CACHE_TTL_S))

    @staticmethod
    def _invalid(description: str) -> Unauthenticated:
        return Unauthenticated(
            description,
            code="invalid_token",
            headers={"WWW-Authenticate": _challenge("invalid_token", description)},
        )


class Auth:
    """Falcon middleware: every routed resource needs a token unless it sets `auth_required = False`.

    `on_rejected` sees every request that fails (the per-address rate limit): it returns
    headers for the 401/403, or raises its own error (429).
    """

    def __init__(self, settings: Settings,
                 on_rejected: Callable[[falcon.Request], dict[str, str]] | None = None) -> None:
        self.verifier = TokenVerifier(settings)
        self.on_rejected = on_rejected

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        if resource is None or not getattr(resource, "auth_required", True):
            return
        try:
            req.context.principal = self._authenticate(req)
        except (Unauthenticated, Forbidden) as exc:
            if self.on_rejected is not None:
                exc.headers = self.on_rejected(req) | exc.headers
            raise

    def _authenticate(self, req: falcon.Request) -> Principal:
        header = req.get_header("Authorization")
        if not header:
            raise Unauthenticated(
                "Missing bearer token", code="unauthorized", headers={"WWW-Authenticate": _challenge()}
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "The Authorization header must be 'Bearer <token>'",
                code="invalid_request",
                headers={"WWW-Authenticate": _challenge("invalid_request", "Bearer token expected")},
            )
        principal = self.verifier.verify(token.strip())
        if REQUIRED_SCOPE not in principal.scopes:
            raise Forbidden(
                f"The access token lacks the {REQUIRED_SCOPE} scope",
                code="insufficient_scope",
                headers={
                    "WWW-Authenticate": _challenge("insufficient_scope", "deploy:manage required", REQUIRED_SCOPE)
                },
            )
        return principal


def mint_token(
    settings: Settings,
    operator: str,
    *,
    client_id: str | None = None,
    scope: str = REQUIRED_SCOPE,
    ttl: dt.timedelta = dt.timedelta(hours=12),
) -> str:
    """An HS256 token for the embedded default (`buddo-deploy token`), for the audience and
    issuer the API expects (none when BUDDO_JWT_AUDIENCE / BUDDO_JWT_ISSUER say ``none``)."""
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {"sub": operator, "scope": scope, "iat": now, "exp": now + ttl}
    if client_id:
        claims["client_id"] = client_id
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
