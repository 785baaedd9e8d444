"""The on-demand TLS ask secret: settings, the claim expiry setting, and the access log that never shows it."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from buddo_deploy.gunicorn_conf import AccessLogger, redact
from buddo_deploy.settings import Settings, SettingsError

from tests.helpers import PRODUCTION_AUTH

PRODUCTION = {"BUDDO_JWT_SECRET": "j", "BUDDO_SECRET_KEY": "k", "BUDDO_DATABASE_URL": "postgresql://u:p@h/db",
              **PRODUCTION_AUTH}


def test_the_embedded_default_makes_an_ask_secret_once_private_and_url_safe(tmp_path: Path) -> None:
    first = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)})
    again = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)})
    assert first.ask_secret and first.ask_secret == again.ask_secret
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first.ask_secret)  # no padding: it goes in a URL as it is
    path = tmp_path / "ask-secret"
    assert path.read_text().strip() == first.ask_secret and path.stat().st_mode & 0o777 == 0o600
    assert first.ask_secret not in repr(first)
    path.chmod(0o644)  # an older version's or a sysadmin's umask: tightened on start
    Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)})
    assert path.stat().st_mode & 0o777 == 0o600


def test_production_takes_the_ask_secret_from_the_environment_or_var(tmp_path: Path) -> None:
    base = PRODUCTION | {"BUDDO_VAR_DIR": str(tmp_path)}
    # Optional (the ask endpoint then refuses everyone): never generated, never an error.
    assert Settings.from_env(base).ask_secret is None and not (tmp_path / "ask-secret").exists()
    secret = "s" * 16
    assert Settings.from_env(base | {"BUDDO_ASK_SECRET": secret}).ask_secret == secret
    # A file the bootstrap's inventory lookup (or a sysadmin) wrote under BUDDO_VAR_DIR.
    (tmp_path / "ask-secret").write_text("t" * 43 + "\n")
    assert Settings.from_env(base).ask_secret == "t" * 43


@pytest.mark.parametrize("bad", ["short", "a" * 15, "with space 123456", "amp&ersand123456", "a" * 257, "é" * 16])
def test_an_ask_secret_must_be_long_and_url_safe(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SettingsError, match="BUDDO_ASK_SECRET must be 16 to 256 characters"):
        Settings.from_env(PRODUCTION | {"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_ASK_SECRET": bad})
    (tmp_path / "ask-secret").write_text(bad)
    with pytest.raises(SettingsError, match="ask-secret must be"):
        Settings.from_env(PRODUCTION | {"BUDDO_VAR_DIR": str(tmp_path)})


def test_the_claim_expiry_and_the_ask_rate_limit(tmp_path: Path) -> None:
    base = {"BUDDO_VAR_DIR": str(tmp_path)}
    default = Settings.from_env(base)
    assert default.domain_claim_expiry_s == 72 * 3600 and default.rate_limit_ask == 300
    custom = Settings.from_env(base | {"BUDDO_DOMAIN_CLAIM_EXPIRY": "2d", "BUDDO_RATE_LIMIT_ASK": "50"})
    assert dt.timedelta(seconds=custom.domain_claim_expiry_s) == dt.timedelta(days=2) and custom.rate_limit_ask == 50
    for name, bad in (("DOMAIN_CLAIM_EXPIRY", "0s"), ("DOMAIN_CLAIM_EXPIRY", "soon"), ("RATE_LIMIT_ASK", "-1")):
        with pytest.raises(SettingsError, match=f"BUDDO_{name}"):
            Settings.from_env(base | {f"BUDDO_{name}": bad})


@pytest.mark.parametrize(("text", "shown"), [
    ("GET /api/deploy/internal/domain-check?domain=a.example.com&token=s3cr3t HTTP/1.1",
     "GET /api/deploy/internal/domain-check?domain=a.example.com&token=- HTTP/1.1"),
    ("GET /api/deploy/internal/domain-check?token=s3cr3t&domain=a.example.com HTTP/1.1",
     "GET /api/deploy/internal/domain-check?token=-&domain=a.example.com HTTP/1.1"),
    ("token=s3cr3t&domain=x", "token=-&domain=x"),
    ("GET /api/deploy/apps?limit=5 HTTP/1.1", "GET /api/deploy/apps?limit=5 HTTP/1.1"),
    ("GET /api/deploy/apps?mytoken=5 HTTP/1.1", "GET /api/deploy/apps?mytoken=5 HTTP/1.1"),
])
def test_the_access_log_never_shows_the_ask_secret(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_the_access_logger_redacts_the_request_line_and_the_query() -> None:
    from gunicorn.config import Config

    logger = AccessLogger(Config())
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/api/deploy/internal/domain-check?domain=x.example.com&token=s3",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/api/deploy/internal/domain-check",
               "QUERY_STRING": "domain=x.example.com&token=s3", "REMOTE_ADDR": "10.0.0.5"}
    resp = SimpleNamespace(status="200 OK", headers=[], sent=10)
    atoms = logger.atoms(resp, SimpleNamespace(headers=[]), environ, dt.timedelta(milliseconds=3))
    assert "s3" not in atoms["r"] and atoms["r"].endswith("token=- HTTP/1.1")
    assert atoms["q"] == "domain=x.example.com&token=-"
