"""`buddo login` against a real OAuth provider (Authlib's server, PKCE required, JWT access
tokens), and the API accepting its tokens through its JWKS (issuer and audience checked)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from buddo_deploy.app import create_app
from buddo_deploy.client import cli
from buddo_deploy.client.session import credentials_path
from buddo_deploy.models import database_proxy

from tests.fakes.oidc import Provider
from tests.helpers import make_settings, migrate

AUDIENCE = "buddo-api"


@pytest.fixture
def provider() -> Iterator[Provider]:
    found = Provider(AUDIENCE)
    yield found
    found.close()


@pytest.fixture
def api(tmp_path: Path, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.WSGITransport]:
    settings = dataclasses.replace(make_settings(tmp_path, "sqlite"), jwt_jwks_url=f"{provider.url}/jwks",
                                   jwt_algorithms=("RS256",), jwt_issuer=provider.url, jwt_audience=AUDIENCE)
    migrate(settings)
    monkeypatch.setenv("BUDDO_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("BUDDO_TOKEN", raising=False)
    yield httpx.WSGITransport(app=create_app(settings))
    database_proxy.obj.close()


def login(provider: Provider, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """Run `buddo login --no-browser`, and be the browser: open the URL it prints."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(cli.run(
        ["login", "--issuer", provider.url, "--no-browser", "--timeout", "30", *extra])))
    thread.start()
    said, deadline = "", time.monotonic() + 20
    while "http" not in said and time.monotonic() < deadline:
        said += capsys.readouterr().err
        time.sleep(0.05)
    [url] = re.findall(r"http://\S+/authorize\?\S+", said)
    browser = httpx.get(url, follow_redirects=True, timeout=10)  # the provider redirects to the loopback
    thread.join(timeout=30)
    assert browser.status_code == 200 and "Logged in" in browser.text
    return result[0], said + capsys.readouterr().err


def test_login_with_pkce_then_commands_use_and_refresh_the_token(provider, api, capsys):
    code, said = login(provider, capsys)
    assert code == 0, said
    assert "code_challenge=" in said and "code_challenge_method=S256" in said
    stored = json.loads(credentials_path().read_text())
    assert stat.S_IMODE(credentials_path().stat().st_mode) == 0o600
    assert stored["issuer"] == provider.url and stored["refresh_token"]

    # The API takes the provider's token (its JWKS, issuer and audience): the app is the subject's.
    assert cli.run(["apps", "create", "from-oidc", "--image", "ghcr.io/acme/app:1", "--json"], transport=api) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["subdomain"] == "from-oidc"
    # An expired access token is refreshed with the refresh token, once, and kept.
    credentials_path().write_text(json.dumps(stored | {"expires_at": time.time() - 10}))
    assert cli.run(["apps", "list", "--json"], transport=api) == 0
    assert [d["subdomain"] for d in json.loads(capsys.readouterr().out)] == ["from-oidc"]
    refreshed = json.loads(credentials_path().read_text())
    assert refreshed["access_token"] != stored["access_token"] and refreshed["expires_at"] > time.time()

    assert cli.run(["logout"]) == 0 and not credentials_path().exists()
    assert cli.run(["apps", "list"], transport=api) == 1
    assert "Not logged in" in capsys.readouterr().err


def _code(provider: Provider, **challenge: str) -> str:
    resp = httpx.get(f"{provider.url}/authorize", params={
        "response_type": "code", "client_id": "buddo-cli", "redirect_uri": "http://127.0.0.1:9/callback",
        "scope": "openid deploy:manage", "state": "s", **challenge}, follow_redirects=False)
    assert resp.status_code == 302, resp.text
    return parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]


def test_the_provider_requires_pkce_and_a_loopback_redirect(provider):
    token = f"{provider.url}/token"
    form = {"grant_type": "authorization_code", "client_id": "buddo-cli", "redirect_uri": "http://127.0.0.1:9/callback"}
    without = httpx.post(token, data=form | {"code": _code(provider)})
    assert without.status_code == 400 and "code_verifier" in without.json()["error_description"]
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    code = _code(provider, code_challenge=challenge, code_challenge_method="S256")
    wrong = httpx.post(token, data=form | {"code": code, "code_verifier": "w" * 50})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    code = _code(provider, code_challenge=challenge, code_challenge_method="S256")
    right = httpx.post(token, data=form | {"code": code, "code_verifier": verifier})
    assert right.status_code == 200 and right.json()["access_token"].count(".") == 2  # a JWT
    elsewhere = httpx.get(f"{provider.url}/authorize", params={
        "response_type": "code", "client_id": "buddo-cli", "redirect_uri": "https://evil.example/cb",
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "s"}, follow_redirects=False)
    assert "evil.example" not in elsewhere.headers.get("Location", "")


def test_a_login_that_never_comes_back_times_out_with_exit_3(provider, api, capsys):
    code = cli.run(["login", "--issuer", provider.url, "--no-browser", "--timeout", "1"])
    assert code == 3 and "No login arrived within 1 s" in capsys.readouterr().err
    assert not credentials_path().exists()
    bad = cli.run(["login", "--issuer", "http://127.0.0.1:9", "--no-browser"])
    assert bad == 1 and "discovery document" in capsys.readouterr().err
