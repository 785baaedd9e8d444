"""``buddo``, the operators' command line, against the API in process (httpx's WSGI transport):
each command's table and --json, one-line errors, exit codes."""

from __future__ import annotations

import json

import httpx
import pytest
from buddo_deploy.app import create_app
from buddo_deploy.client import cli
from buddo_deploy.models import Deployment

from tests.helpers import migrate, run_job, token


@pytest.fixture
def buddo(settings, capsys, monkeypatch):
    """Run ``buddo ARGS`` with a token: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("BUDDO_CONFIG_DIR", str(settings.var_dir / "cli-config"))
    monkeypatch.delenv("BUDDO_TOKEN", raising=False)
    migrate(settings)
    transport = httpx.WSGITransport(app=create_app(settings))

    def run(*args: str, operator: str = "operator-1", auth: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = ["--token", token(operator)] if auth else []
        code = cli.run([*argv, *args], transport=transport)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def create(buddo, name: str = "my-app") -> dict:
    code, out, err = buddo("apps", "create", name, "--image", "ghcr.io/acme/app:1", "--tier", "buddo-starter",
                           "-e", "GREETING=hello", "--json")
    assert code == 0, err
    return json.loads(out)


def test_create_info_and_list_as_tables_and_json(buddo):
    created = create(buddo)
    assert created["subdomain"] == "my-app" and created["env_var_names"] == ["GREETING"]
    code, out, _ = buddo("apps", "list")
    assert code == 0 and "my-app" in out and "pending" in out and "NAME" in out
    code, out, _ = buddo("apps", "list", "--json")  # --json after the command too
    assert [d["id"] for d in json.loads(out)] == [created["id"]]
    code, out, _ = buddo("apps", "info", "my-app")
    assert code == 0 and created["id"] in out and "buddo-starter" in out
    code, out, _ = buddo("--json", "apps", "info", created["id"])
    assert json.loads(out)["url"] == created["url"]
    code, out, _ = buddo("tiers")
    assert code == 0 and "btc-pro" in out and "sats/month" in out


def test_env_set_and_unset_are_patches_with_a_new_release(buddo, settings):
    create(buddo)
    run_job(settings)
    code, out, err = buddo("env", "set", "my-app", "A=1", "B=two words")
    assert code == 0, err
    assert sorted(json.loads(buddo("--json", "env", "list", "my-app")[1])) == ["A", "B", "GREETING"]
    assert buddo("env", "unset", "my-app", "A")[0] == 0
    code, out, _ = buddo("env", "list", "my-app")
    assert out.split() == ["B", "GREETING"]
    assert Deployment.get(Deployment.subdomain == "my-app").generation >= 3


def test_bad_input_is_one_line_and_the_documented_exit_code(buddo):
    create(buddo)
    code, _, err = buddo("env", "set", "my-app", "not-a-pair")
    assert code == 2 and "KEY=VALUE" in err and "Traceback" not in err
    code, _, err = buddo("apps", "info", "nope")
    assert (code, err.strip()) == (1, "Error: No app named 'nope' (see `buddo apps list`)")
    code, _, err = buddo("apps", "create", "Bad_Name", "--image", "ghcr.io/a/b:1")
    assert code == 1 and err.startswith("Error: subdomain:") and "(request " in err and len(err.splitlines()) == 1
    code, _, err = buddo("apps", "frobnicate")
    assert code == 2 and "Traceback" not in err
    code, _, err = buddo("apps", "list", auth=False)
    assert code == 1 and "Not logged in" in err


def test_an_expired_token_and_an_api_that_is_down(buddo, settings, capsys):
    code, _, err = buddo("--token", token(expires_in=-60), "apps", "list", auth=False)
    assert code == 1 and err.startswith("Error: ") and "(request " in err
    capsys.readouterr()
    code = cli.run(["--api-url", "http://127.0.0.1:9", "--token", token(), "apps", "list"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: Cannot reach the API at http://127.0.0.1:9") and "Traceback" not in err


def test_a_wait_that_does_not_settle_exits_3(buddo):
    create(buddo)  # no worker: it stays pending
    code, _, err = buddo("apps", "status", "my-app", "--wait", "--timeout", "1")
    assert code == 3 and "Still pending after 1 s" in err


def test_releases_logs_and_a_detached_run(buddo, settings):
    create(buddo)
    run_job(settings)
    code, out, _ = buddo("logs", "my-app")
    assert code == 0 and "create" in out and "deploy" in out
    code, out, _ = buddo("releases", "my-app")
    assert code == 0 and "v1" in out
    code, out, err = buddo("run", "my-app", "--detach", "--", "sh", "-c", "echo hi")
    assert code == 0 and "queued" in out, err
    code, _, err = buddo("destroy", "my-app")
    assert code == 2  # no such command: `apps destroy`
    code, _, err = buddo("apps", "destroy", "my-app", "--yes")
    assert code == 0, err
