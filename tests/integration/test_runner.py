"""The runner bridge on real ansible-runner runs against localhost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import falcon.testing
import pytest
from buddo_deploy.app import create_app
from buddo_deploy.cli import main
from buddo_deploy.runner import run_playbook, secret_dir, sweep_stale_secrets
from buddo_deploy.settings import STRATEGIES

from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, create_deployment, local_inventory, make_settings, migrate

PLAYBOOKS = Path(__file__).parent / "playbooks"


# Both strategies BUDDO_ANSIBLE_STRATEGY offers keep data, secrets and failures as they should.
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_user_strings_stay_data_and_secrets_stay_out(tmp_path: Path, strategy: str) -> None:
    literal = "{{ lookup('pipe', 'touch " + str(tmp_path / "pwned") + "') }}"
    secret = "very-secret-d41d8cd98f"
    events = []
    work = tmp_path / "runner"
    result = run_playbook(
        PLAYBOOKS / "echo.yml", local_inventory(tmp_path),
        {"user_value": literal, "expected_literal": literal, "output_file": str(tmp_path / "out")},
        secrets={"API_KEY": secret}, on_event=events.append, work_dir=work, keep_data_dir=True, strategy=strategy,
    )
    assert result.ok, result
    assert not (tmp_path / "pwned").exists()
    assert (tmp_path / "out").read_text() == secret  # the secret did reach the task
    assert result.stats == {"reported": len(literal)}
    [private] = list(work.iterdir())
    grep = subprocess.run(["grep", "-rl", secret, str(private)], capture_output=True, text=True, check=False)
    assert grep.stdout == ""
    assert not list(secret_dir().iterdir())  # the secrets file is gone
    assert all(secret not in (e.message or "") for e in events)
    assert {"playbook_on_task_start", "runner_on_ok", "playbook_on_stats"} <= {e.event for e in events}
    # Mitogen's deprecation warning (a third-party strategy) never reaches a job event.
    assert not any("deprecat" in (e.message or "").lower() for e in events)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_playbooks_run_with_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  strategy: str) -> None:
    # What a worker may hold in its environment: none of it is the playbook's business.
    fakes = {
        "BUDDO_JWT_SECRET": "jwt-secret-5b0e9c1d7a",
        "BUDDO_SECRET_KEY": "fernet-key-8c2f4e6a1b",
        "BUDDO_DATABASE_URL": "postgresql://buddo:db-password-3e7d9a@db.internal:5432/buddo",
        "BUDDO_WEBHOOK_SECRET": "webhook-secret-a94f0b",
        "PGPASSWORD": "pg-password-1c5e8d",
        "UNRELATED_SETTING": "unrelated-value-6d2a7f",
    }
    for name, value in fakes.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "runner"
    result = run_playbook(PLAYBOOKS / "env.yml", local_inventory(tmp_path), {"output_file": str(tmp_path / "env.txt")},
                          work_dir=work, keep_data_dir=True, strategy=strategy)
    assert result.ok, result

    dumped = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert not set(fakes) & set(dumped), sorted(dumped)
    assert dumped["HOME"] == os.environ["HOME"] and "/usr/sbin" in dumped["PATH"].split(":")
    [private] = list(work.iterdir())
    [command] = list(private.glob("artifacts/*/command"))
    assert "PATH" in command.read_text()  # ansible-runner wrote the run's environment here
    assert list(private.glob("artifacts/*/fact_cache/*"))  # and the env facts here
    for value in fakes.values():
        grep = subprocess.run(["grep", "-rl", value, str(private)], capture_output=True, text=True, check=False)
        assert grep.stdout == "", (value, grep.stdout)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_failure_names_the_task_and_message(tmp_path: Path, strategy: str) -> None:
    result = run_playbook(PLAYBOOKS / "fail.yml", local_inventory(tmp_path), {}, work_dir=tmp_path / "r",
                          strategy=strategy)
    assert not result.ok and result.status == "failed"
    assert result.failed_task == "Check the widget"
    assert result.message == "the widget is broken"
    assert not list((tmp_path / "r").iterdir())  # the private data dir is cleaned up


def test_hard_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_playbook(PLAYBOOKS / "sleep.yml", local_inventory(tmp_path), {}, timeout_s=3, work_dir=tmp_path / "r")
    assert result.status == "timeout"
    assert result.message == "timed out after 3 s"
    assert time.monotonic() - started < 25


def test_cancel_when_the_lease_is_lost(tmp_path: Path) -> None:
    deadline = time.monotonic() + 3
    result = run_playbook(PLAYBOOKS / "sleep.yml", local_inventory(tmp_path), {}, work_dir=tmp_path / "r",
                          should_cancel=lambda: time.monotonic() > deadline)
    assert result.status == "canceled"
    assert "lease" in (result.message or "")


def test_secret_dirs_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = secret_dir().parent / f"buddo-secrets-{dead.pid}"
    stale.mkdir()
    (stale / "run-x.json").write_text("{}")
    assert sweep_stale_secrets() >= 1
    assert not stale.exists() and secret_dir().exists()


def test_what_a_run_reports_reaches_the_caller_while_it_still_runs(tmp_path: Path) -> None:
    flag = tmp_path / "reported"
    reports = []

    def on_report(data: dict) -> None:
        reports.append(data)
        flag.touch()

    result = run_playbook(PLAYBOOKS / "report.yml", local_inventory(tmp_path), {"reported_file": str(flag)},
                          on_report=on_report, work_dir=tmp_path / "r")
    assert result.ok, result
    assert reports == [{"buddo_outcomes": {"d1": {"ok": True}}}]
    assert result.stats == reports[0]


def test_the_sysadmins_document_keeps_what_operators_typed_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`buddo-deploy desired > d.json; ansible-playbook -e @d.json`: a health path that is a template stays text."""
    settings = make_settings(tmp_path, "sqlite")
    migrate(settings)
    client = falcon.testing.TestClient(create_app(settings))
    create_deployment(client, health_check={"path": "/{{7*6}}"})
    for name, value in {"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_DATABASE_URL": settings.database_url,
                        "BUDDO_SECRET_KEY": "test-encryption-passphrase", "BUDDO_JWT_SECRET": JWT_SECRET,
                        **PRODUCTION_AUTH}.items():
        monkeypatch.setenv(name, value)
    assert main(["desired", "--host", settings.default_host]) == 0
    (tmp_path / "desired.json").write_text(capsys.readouterr().out)
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(local_inventory(tmp_path)),
         "-e", f"@{tmp_path / 'desired.json'}", "-e", f"output_file={tmp_path / 'out'}",
         str(PLAYBOOKS / "health_path.yml")], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "out").read_text() == "/{{7*6}}"


def test_a_finished_run_is_closed_without_ptyprocess_wait_and_a_running_one_as_before() -> None:
    import pexpect

    ended = pexpect.spawn("true")
    ended.expect(pexpect.EOF)
    ended.close()  # ansible-runner closes the child once its output ended
    assert ended.exitstatus == 0
    assert ended.ptyproc.delayafterclose == 0
    running = pexpect.spawn("sleep", ["30"])
    running.close()  # still running: hung up, given its 0.1 s, then killed
    assert running.ptyproc.delayafterclose == 0.1
    assert not running.isalive() and running.signalstatus is not None
