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


def test_every_other_command_as_a_table_and_as_json(buddo, settings):
    app = create(buddo)
    run_job(settings)
    checks = [
        (("apps", "status", "my-app"), "STATUS", lambda j: j["status"] == "running"),
        (("apps", "update", "my-app", "--port", "3001"), "3001", lambda j: j["port"] == 3001),
        (("apps", "restart", "my-app"), "deploying", lambda j: j["status"] == "deploying"),
        (("apps", "stop", "my-app"), "stopped", lambda j: j["desired_state"] == "stopped"),
        (("domains", "my-app"), "custom_domain", lambda j: j["url"] == app["url"]),
        (("billing",), "", lambda j: isinstance(j, dict)),
        (("open", "my-app"), app["url"], None),
        (("webhooks", "create", "https://hooks.example.com/x", "--event", "deploy.failed"), "shown once",
         lambda j: j["secret"].startswith("whsec_") and j["webhook"]["event_types"] == ["deploy.failed"]),
        (("webhooks", "list"), "hooks.example.com", lambda j: len(j) == 2),  # created twice: as a table, as JSON
        (("registry-login", "list"), "REGISTRY", lambda j: j == []),
        (("releases", "my-app"), "RELEASE", lambda j: j[0]["number"] >= 1),
        (("env", "list", "my-app"), "GREETING", lambda j: j == ["GREETING"]),
    ]
    for args, in_table, check in checks:
        code, out, err = buddo(*args)
        assert code == 0 and in_table in out, (args, out, err)
        if check is not None:
            code, out, err = buddo(*args, "--json") if args[0] != "apps" or args[1] in {"status"} else (
                buddo("apps", "info" if args[1] != "status" else "status", "my-app", "--json"))
            assert code == 0 and check(json.loads(out)), (args, out, err)
    code, out, _ = buddo("--json", "webhooks", "list")
    for hook in json.loads(out):
        assert buddo("webhooks", "delete", hook["id"])[0] == 0
    assert json.loads(buddo("--json", "webhooks", "list")[1]) == []
    code, out, err = buddo("rollback", "my-app", "7")
    assert code == 1 and "release" in err.lower() and err.count("\n") == 1


def test_run_prints_lines_as_they_come_then_those_only_the_run_kept_and_exits_with_its_code(capsys, monkeypatch):
    """Against a recorded API: the stream breaks after one line (resumed with Last-Event-ID),
    sends another, then the run, whose output holds a line the stream never had."""
    monkeypatch.setenv("BUDDO_CONFIG_DIR", "/nonexistent")
    app, run_id = "0b0f2c3e-0000-4000-8000-00000000000a", "5b0f2c3e-0000-4000-8000-00000000000b"
    lines = [{"at": f"2026-12-06T10:00:0{i}.000000001Z", "stream": "stdout", "text": f"line {i}", "container": "c"}
             for i in range(3)]
    run = {"id": run_id, "deployment_id": app, "state": "failed", "exit_code": 4, "timeout_s": 60, "error": None,
           "output": lines}
    seen: list[str | None] = []

    def event(ident: int, line: dict) -> str:
        return f"id: {ident}\nevent: line\ndata: {json.dumps(line)}\n\n"

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert json.loads(request.content) == {"command": ["sh", "-c", "x"], "timeout_s": 60}
            return httpx.Response(202, json={"run": run | {"state": "queued", "output": []}})
        assert request.url.params["follow"] == "true"
        seen.append(request.headers.get("Last-Event-ID"))
        body = (event(1, lines[0]) if len(seen) == 1
                else ": ping\n\n" + event(2, lines[1]) + f"event: end\ndata: {json.dumps({'run': run})}\n\n")
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    code = cli.run(["--token", token(), "run", app, "--timeout", "60", "--", "sh", "-c", "x"],
                   transport=httpx.MockTransport(api))
    out = capsys.readouterr().out
    assert code == 4 and seen == [None, "1"]
    assert [line.split()[-1] for line in out.splitlines()] == ["0", "1", "2"]  # each once, in order
    code = cli.run(["--token", token(), "--json", "run", app, "--timeout", "60", "--", "sh", "-c", "x"],
                   transport=httpx.MockTransport(api))
    assert code == 4 and json.loads(capsys.readouterr().out)["exit_code"] == 4
