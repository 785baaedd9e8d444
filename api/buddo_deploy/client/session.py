"""The operator client's session: where the API is, the token, and the API's answers.

The token comes from ``--token``, else ``BUDDO_TOKEN``, else what ``buddo login`` stored in
the user's config directory (``credentials.json``, 0600): an access token, and when the
issuer gave one, a refresh token used once the access token has expired.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer
from authlib.integrations.httpx_client import OAuth2Client

DEFAULT_API_URL = "http://localhost:8000"
TIMEOUT_S = 30.0
# Exit codes scripts can use.
EXIT_API, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3


class ClientError(Exception):
    """What the command line says in one line before it exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_API, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.request_id = message, code, request_id

    def line(self) -> str:
        return f"Error: {self.message}" + (f" (request {self.request_id})" if self.request_id else "")


def config_dir() -> Path:
    return Path(os.environ.get("BUDDO_CONFIG_DIR") or typer.get_app_dir("buddo"))


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def load_credentials() -> dict[str, Any]:
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_credentials(data: dict[str, Any]) -> Path:
    """Write them 0600 (created so: never readable by others, not even for a moment)."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.chmod(path, 0o600)
    return path


def forget_credentials() -> bool:
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass
class Session:
    """One command's connection to the API."""

    api_url: str
    token: str | None = None
    json_output: bool = False
    stored: dict[str, Any] = field(default_factory=dict)
    transport: httpx.BaseTransport | None = None  # tests: the API in process

    def _token(self) -> str:
        if self.token:
            return self.token
        stored = self.stored or load_credentials()
        if not stored.get("access_token"):
            raise ClientError("Not logged in: run `buddo login`, or pass --token / set BUDDO_TOKEN")
        if stored.get("expires_at") and float(stored["expires_at"]) < time.time() + 30:
            stored = self._refresh(stored)
        self.stored = stored
        return str(stored["access_token"])

    def _refresh(self, stored: dict[str, Any]) -> dict[str, Any]:
        if not stored.get("refresh_token") or not stored.get("token_endpoint"):
            raise ClientError("The stored login has expired: run `buddo login` again")
        with OAuth2Client(client_id=stored.get("client_id"), token_endpoint_auth_method="none",
                          timeout=TIMEOUT_S) as oauth:
            try:
                token = oauth.refresh_token(stored["token_endpoint"], refresh_token=stored["refresh_token"])
            except Exception as exc:  # the issuer said no, or cannot be reached
                raise ClientError(f"The stored login could not be refreshed ({exc}): run `buddo login` again") \
                    from exc
        refreshed = {**stored, "access_token": token["access_token"],
                     "refresh_token": token.get("refresh_token") or stored["refresh_token"],
                     "expires_at": token.get("expires_at") or (time.time() + float(token.get("expires_in") or 3600))}
        save_credentials(refreshed)
        return refreshed

    def client(self, timeout: float | httpx.Timeout | None = TIMEOUT_S) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self._token()}", "User-Agent": "buddo-cli/1"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout, transport=self.transport)

    def call(self, method: str, path: str, *, timeout: float = TIMEOUT_S, **kwargs: Any) -> Any:
        """The API's JSON answer, or ClientError with its envelope's message and request id."""
        try:
            with self.client(timeout) as client:
                resp = client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ClientError(f"The API at {self.api_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"Cannot reach the API at {self.api_url}: {exc}") from exc
        return answer(resp)


def answer(resp: httpx.Response) -> Any:
    if resp.is_success:
        return resp.json() if resp.content else {}
    request_id = resp.headers.get("X-Request-Id")
    try:
        error = resp.json().get("error") or {}
        message = str(error.get("message") or resp.reason_phrase)
        details = error.get("details")
        if isinstance(details, list) and details and isinstance(details[0], dict) and "field" in details[0]:
            message = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in details)
    except (ValueError, AttributeError):
        message = f"HTTP {resp.status_code} {resp.reason_phrase}"
    raise ClientError(message, request_id=request_id)
