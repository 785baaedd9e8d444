"""Duration settings and the billing CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import falcon.testing
import pytest
from buddo_deploy import cli
from buddo_deploy.app import create_app
from buddo_deploy.models import BillingCycle, Deployment, LedgerEntry, database_proxy, utcnow
from buddo_deploy.settings import Settings, parse_duration

from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, create_deployment, make_settings, migrate


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("3d", 259200), ("12h", 43200), ("15m", 900),
                                          ("20s", 20), ("45", 45), (" 7 d ", 7 * 86400), ("0s", 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "1.5d", "-3d", "3w", "3 days", "1d2h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_billing_settings_from_the_environment(tmp_path):
    base = {"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_JWT_SECRET": "x", "BUDDO_SECRET_KEY": "y", **PRODUCTION_AUTH}
    embedded = Settings.from_env(base)
    assert (embedded.billing_cycle_s, embedded.billing_grace_s) == (30 * 86400, 3 * 86400)
    assert embedded.billing_enabled and embedded.billing_starting_points > 0 and embedded.billing_starting_sats > 0
    # The embedded default signs webhooks with a secret kept under var/ (0600), like the JWT secret.
    assert embedded.billing_webhook_secret == (tmp_path / "billing-webhook-secret").read_text().strip()
    assert (tmp_path / "billing-webhook-secret").stat().st_mode & 0o777 == 0o600
    production = Settings.from_env(base | {"BUDDO_DATABASE_URL": "postgresql://h/db", "BUDDO_BILLING_CYCLE": "20s",
                                           "BUDDO_BILLING_GRACE": "5", "BUDDO_BILLING_ENABLED": "false",
                                           "BUDDO_BILLING_WEBHOOK_SECRET": "s"})
    assert (production.billing_cycle_s, production.billing_grace_s) == (20, 5)
    assert not production.billing_enabled and production.billing_webhook_secret == "s"
    assert (production.billing_starting_points, production.billing_starting_sats) == (0, 0)
    with pytest.raises(ValueError, match="BUDDO_BILLING_CYCLE"):
        Settings.from_env(base | {"BUDDO_BILLING_CYCLE": "0d"})
    with pytest.raises(ValueError, match="duration"):
        Settings.from_env(base | {"BUDDO_BILLING_GRACE": "soon"})


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = make_settings(tmp_path, "sqlite")
    migrate(settings)
    for name, value in {"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_DATABASE_URL": settings.database_url,
                        "BUDDO_JWT_SECRET": JWT_SECRET, "BUDDO_SECRET_KEY": "k", "BUDDO_BILLING_STARTING_POINTS": "0",
                        "BUDDO_BILLING_STARTING_SATS": "0", **PRODUCTION_AUTH}.items():
        monkeypatch.setenv(name, value)
    yield settings
    database_proxy.obj.close()


def test_cli_credit_is_idempotent_by_reference(cli_env, capsys):
    assert cli.main(["billing", "credit", "--operator", "op-1", "--sats", "2500", "--reference", "inv-1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["replayed"], first["sats_balance"], first["points_balance"]) == (False, 2500, 0)
    assert cli.main(["billing", "credit", "--operator", "op-1", "--sats", "2500", "--reference", "inv-1"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] is True
    assert cli.main(["billing", "credit", "--operator", "op-1", "--points", "10"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["reference"].startswith("cli-") and second["points_balance"] == 10
    assert [(e.kind, e.track, e.amount) for e in LedgerEntry.select().order_by(LedgerEntry.id)] == [
        ("credit", "bitcoin", 2500), ("credit", "buddo_points", 10)]


def test_cli_refuses_bad_credits(cli_env, capsys):
    assert cli.main(["billing", "credit", "--operator", "op-1", "--points", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["billing", "credit", "--operator", "op-1", "--points", "1", "--sats", "1"])
    with pytest.raises(SystemExit):
        cli.main(["billing", "credit", "--operator", "op-1"])
    assert LedgerEntry.select().count() == 0


def test_cli_run_bills_what_is_due(cli_env, capsys):
    # One buddo-starter cycle (500 points): the create pays cycle 0, 50 points (its stipend) are left.
    client = falcon.testing.TestClient(create_app(dataclasses.replace(cli_env, billing_starting_points=500)))
    ident = create_deployment(client)
    assert cli.main(["billing", "run"]) == 0
    assert json.loads(capsys.readouterr().out)["cycles_started"] == []  # cycle 0 was paid by the create
    Deployment.update(next_billing_at=utcnow() - dt.timedelta(seconds=1)).where(Deployment.id == ident).execute()
    assert cli.main(["billing", "run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cycles_started"] == [[ident, 1]] and report["cycles_paid"] == []  # 50 points: unpaid
    assert Deployment.get_by_id(ident).billing_status == "past_due"
    assert BillingCycle.select().count() == 2
    assert cli.main(["billing", "run"]) == 0
    assert json.loads(capsys.readouterr().out)["cycles_started"] == []
