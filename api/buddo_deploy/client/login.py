"""``buddo login``: OAuth 2.0 authorization code with PKCE (RFC 7636) and a loopback redirect
(RFC 8252), as ``gh auth login`` and ``gcloud auth login`` do it, by Authlib's client.

The issuer's endpoints come from its OpenID discovery document. A one-shot HTTP server on
127.0.0.1 (a port the system picks) takes the redirect; the state is checked, the code and
its verifier are exchanged for tokens, and nothing is stored until that worked.
"""

from __future__ import annotations

import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client

from .session import TIMEOUT_S, ClientError

DONE_PAGE = (b"<!doctype html><title>buddo</title><p>Logged in. You can close this window and go back to the "
             b"terminal.</p>")


class _Callback(HTTPServer):
    """Takes one redirect to /callback and keeps its query."""

    def __init__(self) -> None:
        self.query: dict[str, str] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path != "/callback":
                    self.send_error(404)
                    return
                outer.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(DONE_PAGE)))
                self.end_headers()
                self.wfile.write(DONE_PAGE)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/callback"


def discover(issuer: str) -> dict[str, Any]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        meta = httpx.get(url, timeout=TIMEOUT_S).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ClientError(f"Cannot read the issuer's discovery document at {url}: {exc}") from exc
    if not isinstance(meta, dict) or not meta.get("authorization_endpoint") or not meta.get("token_endpoint"):
        raise ClientError(f"{url} names no authorization and token endpoints")
    return meta


def login(issuer: str, client_id: str, scope: str, *, open_browser: bool, timeout_s: float,
          say: Callable[[str], None]) -> dict[str, Any]:
    """The stored credentials of a login at ``issuer``."""
    meta = discover(issuer)
    callback = _Callback()
    verifier = generate_token(64)
    try:
        with OAuth2Client(client_id=client_id, scope=scope, redirect_uri=callback.redirect_uri,
                          code_challenge_method="S256", token_endpoint_auth_method="none",
                          timeout=TIMEOUT_S) as oauth:
            url, state = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
            if open_browser and webbrowser.open(url):
                say(f"Opened your browser to log in. If it did not open, visit:\n{url}")
            else:
                say(f"Open this URL in a browser to log in:\n{url}")
            thread = threading.Thread(target=_serve_until_called, args=(callback, timeout_s), daemon=True)
            thread.start()
            thread.join(timeout_s + 1)
            query = callback.query
            if query is None:
                raise ClientError(f"No login arrived within {timeout_s:g} s", code=3)
            if query.get("error"):
                raise ClientError(f"The issuer refused the login: {query['error']} "
                                  f"{query.get('error_description', '')}".strip())
            if query.get("state") != state:
                raise ClientError("The login's answer does not match its request (state): not used")
            try:
                token = oauth.fetch_token(meta["token_endpoint"], code=query.get("code", ""), code_verifier=verifier,
                                          grant_type="authorization_code")
            except Exception as exc:  # the issuer refused the code (expired, PKCE) or cannot be reached
                raise ClientError(f"The issuer did not give a token: {exc}") from exc
    finally:
        callback.server_close()
    return {"issuer": issuer, "client_id": client_id, "token_endpoint": meta["token_endpoint"],
            "access_token": token["access_token"], "refresh_token": token.get("refresh_token"),
            "expires_at": token.get("expires_at") or time.time() + float(token.get("expires_in") or 3600)}


def _serve_until_called(callback: _Callback, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    callback.timeout = 0.5
    while callback.query is None and time.monotonic() < deadline:
        callback.handle_request()
