"""Every CLI error a user can cause is one line naming the fix, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, free_port


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "BUDDO_VAR_DIR": str(tmp_path / "var")}
    return subprocess.run([sys.executable, "-m", "buddo_deploy.cli", *args], env=base | env, capture_output=True,
                          text=True, timeout=60, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_database_url_without_the_secret_key_names_the_variable(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = cli(tmp_path, "db", "upgrade", BUDDO_DATABASE_URL=url, BUDDO_JWT_SECRET=JWT_SECRET)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("buddo-deploy db: BUDDO_SECRET_KEY not set") and "JWT" not in line
    both = one_line(cli(tmp_path, "db", "upgrade", BUDDO_DATABASE_URL=url))
    assert "BUDDO_JWT_SECRET and BUDDO_SECRET_KEY" in both


def test_an_unreachable_database_says_so_without_the_password(tmp_path):
    url = f"postgresql://buddo:hunter2@127.0.0.1:{free_port()}/buddo"
    result = cli(tmp_path, "db", "upgrade", BUDDO_DATABASE_URL=url, BUDDO_JWT_SECRET="j", BUDDO_SECRET_KEY="k",
                 **PRODUCTION_AUTH)
    assert result.returncode == 1
    line = one_line(result)
    assert "cannot reach the database postgresql://buddo:***@127.0.0.1" in line and "BUDDO_DATABASE_URL" in line
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize(("args", "env", "expected"), [
    (("db", "upgrade"), {"BUDDO_DATABASE_URL": "mysql://db/x"}, "unsupported database URL scheme 'mysql'"),
    (("db", "upgrade"), {"BUDDO_JOB_TIMEOUT": "ten"}, "BUDDO_JOB_TIMEOUT must be a whole number"),
    (("db", "upgrade"), {"BUDDO_HEALTH_INTERVAL": "nan"}, "BUDDO_HEALTH_INTERVAL must be a number"),
    (("db", "upgrade"), {"BUDDO_HOST_PORT_RANGE": "20000:29999"}, "BUDDO_HOST_PORT_RANGE must be LOW-HIGH"),
    (("db", "upgrade"), {"BUDDO_METRICS_ALLOW": "everyone"}, "BUDDO_METRICS_ALLOW must be comma-separated CIDRs"),
    (("db", "upgrade"), {"BUDDO_LOG_LEVEL": "loud"}, "BUDDO_LOG_LEVEL must be"),
    (("serve",), {"BUDDO_DATABASE_URL": "sqlite:///x.db", "BUDDO_JWT_AUDIENCE": "", "BUDDO_JWT_ISSUER": ""},
     "BUDDO_JWT_AUDIENCE and BUDDO_JWT_ISSUER not set: with BUDDO_DATABASE_URL or BUDDO_JWT_JWKS_URL set"),
    (("worker",), {"BUDDO_JWT_JWKS_URL": "https://id.example/jwks.json", "BUDDO_JWT_AUDIENCE": "buddo"},
     "BUDDO_JWT_ISSUER not set"),
    (("serve",), {"BUDDO_JWT_ALGORITHMS": "RS256"}, "BUDDO_JWT_ALGORITHMS: RS256 cannot be used"),
    (("token", "--operator", "me"), {"BUDDO_JWT_JWKS_URL": "https://id.example/jwks.json", "BUDDO_JWT_AUDIENCE": "a",
                                     "BUDDO_JWT_ISSUER": "i"}, "BUDDO_JWT_JWKS_URL is set: tokens come from"),
    (("prune",), {"BUDDO_RETENTION_DAYS": "thirty"}, "BUDDO_RETENTION_DAYS must be a whole number of 0 or more"),
    (("db", "upgrade"), {"BUDDO_OPERATOR_CONCURRENCY": "0"}, "BUDDO_OPERATOR_CONCURRENCY must be 1 or more"),
    (("db", "upgrade"), {"BUDDO_API_REQUEST_TIMEOUT": "0"}, "BUDDO_API_REQUEST_TIMEOUT must be above 0 seconds"),
    (("worker", "--once"), {}, "run `buddo-deploy db upgrade` first"),
    (("desired",), {}, "run `buddo-deploy db upgrade` first"),
], ids=["scheme", "integer", "number", "port-range", "metrics-allow", "log-level", "no-audience",
        "jwks-no-issuer", "rs256-with-secret", "token-with-jwks", "retention-days", "operator-concurrency",
        "request-timeout", "worker-schema", "desired-schema"])
def test_bad_settings_are_one_line_and_exit_1(tmp_path, args, env, expected):
    if "BUDDO_DATABASE_URL" in env:
        env = {"BUDDO_JWT_SECRET": "j", "BUDDO_SECRET_KEY": "k"} | PRODUCTION_AUTH | env
    result = cli(tmp_path, *args, **env)
    assert result.returncode == 1, result
    assert expected in one_line(result)


@pytest.mark.parametrize(("args", "env", "expected"), [
    (("serve", "--workers", "many"), {}, "argument --workers: must be a whole number of 1 or more, got 'many'"),
    (("serve",), {"BUDDO_API_WORKERS": "0"}, "argument --workers: must be a whole number of 1 or more, got '0'"),
    (("serve",), {"BUDDO_API_THREADS": "1.5"}, "argument --threads: must be a whole number of 1 or more, got '1.5'"),
    (("worker", "--concurrency", "-2"), {}, "argument --concurrency"),
    (("token", "--operator", "me", "--hours", "1e300"), {}, "argument --hours"),
    (("token", "--operator", "me", "--hours", "nan"), {}, "argument --hours"),
    (("reconcile", "--wait", "soon"), {}, "argument --wait"),
    (("prune", "--days", "-1"), {}, "argument --days: must be a whole number of days"),
    (("db", "downgrade"), {}, "invalid choice: 'downgrade'"),
    ((), {}, "the following arguments are required: command"),
], ids=["workers", "workers-env", "threads-env", "concurrency", "hours-huge", "hours-nan", "wait", "prune-days",
        "db-action", "no-command"])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, args, env, expected):
    result = cli(tmp_path, *args, **env)
    assert result.returncode == 2, result
    line = one_line(result)
    assert expected in line and line.endswith("--help)")


def test_the_embedded_token_is_for_the_embedded_api(tmp_path):
    """`buddo-deploy token` out of the box: an audience and an issuer, which the API checks."""
    import jwt
    from buddo_deploy.auth import TokenVerifier
    from buddo_deploy.settings import Settings

    result = cli(tmp_path, "token", "--operator", "me")
    assert result.returncode == 0, result.stderr
    minted = result.stdout.strip()
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert (claims["aud"], claims["iss"]) == ("buddo-deploy", "buddo-deploy-local")
    settings = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path / "var")})
    assert TokenVerifier(settings).verify(minted).operator_id == "me"


def test_an_unwritable_env_file_is_one_line(tmp_path):
    assert cli(tmp_path, "db", "upgrade").returncode == 0
    result = cli(tmp_path, "desired", "--env-file", str(tmp_path / "missing" / "env.json"))
    assert result.returncode == 1
    assert one_line(result) == f"buddo-deploy desired: No such file or directory: {tmp_path / 'missing' / 'env.json'}"
