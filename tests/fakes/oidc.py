"""A real OAuth 2.0 / OpenID provider for login tests: Authlib's authorization server (Flask).

- Authorization code with PKCE required (S256 only, RFC 7636); public clients (no secret).
- Loopback redirect URIs only (RFC 8252: http://127.0.0.1:<any port>/...).
- JWT access tokens (RFC 9068), RS256, for one audience (the API's), with the granted
  scope; their keys at /jwks; refresh tokens (rotated on use).
- Discovery at /.well-known/openid-configuration.
It logs in one user without a form: the test is the browser, and GET /authorize answers
at once with the redirect to the client.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server


@dataclass
class Client(ClientMixin):
    client_id: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri.startswith("http://127.0.0.1:")

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in {"authorization_code", "refresh_token"}


@dataclass
class User:
    sub: str

    def get_user_id(self) -> str:
        return self.sub


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_auth_time(self) -> int:
        return int(self.auth_time)


class Provider:
    """The provider on 127.0.0.1 in a thread; ``url`` is its issuer."""

    def __init__(self, audience: str, subject: str = "operator-oidc") -> None:
        self.audience, self.user = audience, User(subject)
        self.codes: dict[str, Code] = {}
        self.refresh: dict[str, dict[str, Any]] = {}
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
        self.flask = Flask("oidc-fake")
        self.server = make_server("127.0.0.1", 0, self.flask, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._build()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()

    def _build(self) -> None:
        provider = self

        class Generator(JWTBearerTokenGenerator):
            def get_jwks(self) -> Any:
                return KeySet([provider.key]).as_dict(private=True)

            def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
                return provider.audience

        def save_token(token: dict[str, Any], request: Any) -> None:
            if token.get("refresh_token"):
                provider.refresh[token["refresh_token"]] = {"user": request.user, "scope": token.get("scope", ""),
                                                            "client_id": request.client.get_client_id()}

        server = AuthorizationServer(self.flask, query_client=lambda client_id: Client(client_id),
                                     save_token=save_token)
        server.register_token_generator("default", Generator(
            issuer=self.url, refresh_token_generator=lambda *args, **kwargs: generate_token(48)))

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = getattr(request, "payload", request).data
                provider.codes[code] = Code(code, request.client.get_client_id(), request.payload.redirect_uri,
                                            request.payload.scope or "", request.user, data.get("code_challenge"),
                                            data.get("code_challenge_method"))

            def query_authorization_code(self, code: str, client: Any) -> Code | None:
                found = provider.codes.get(code)
                return found if found is not None and found.client_id == client.get_client_id() else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> User:
                return authorization_code.user

        class Refresh(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
            INCLUDE_NEW_REFRESH_TOKEN = True

            def authenticate_refresh_token(self, refresh_token: str) -> Any:
                found = provider.refresh.get(refresh_token)
                if found is None:
                    return None

                class Credential:
                    def get_scope(self) -> str:
                        return str(found["scope"])

                    def check_client(self, client: Any) -> bool:
                        return bool(client.get_client_id() == found["client_id"])

                    def is_revoked(self) -> bool:
                        return False

                    def is_expired(self) -> bool:
                        return False

                credential = Credential()
                credential.token = refresh_token  # type: ignore[attr-defined]
                credential.user = found["user"]  # type: ignore[attr-defined]
                return credential

            def authenticate_user(self, credential: Any) -> Any:
                return credential.user

            def revoke_old_credential(self, credential: Any) -> None:
                provider.refresh.pop(credential.token, None)

        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_grant(Refresh)

        @self.flask.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify({"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                            "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                            "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                            "grant_types_supported": ["authorization_code", "refresh_token"],
                            "token_endpoint_auth_methods_supported": ["none"]})

        @self.flask.get("/jwks")
        def jwks() -> Any:
            return jsonify(KeySet([self.key]).as_dict(private=False))

        @self.flask.get("/authorize")
        def authorize() -> Any:
            return server.create_authorization_response(grant_user=self.user)

        @self.flask.post("/token")
        def token() -> Any:
            return server.create_token_response()
