"""A job run is never left unsupervised: a failing heartbeat or event recorder cancels ansible-playbook."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Job
from buddo_deploy.services import engine
from buddo_deploy.tasks import JobRun

from tests.helpers import local_inventory as inventory
from tests.integration.test_runner import PLAYBOOKS


def _plan(settings, tmp_path):
    with Job._meta.database.atomic():
        Job.create(action="reconcile", host="localhost", lock_key="localhost/", timeout_s=120,
                   run_after=jobqueue.utcnow(), created_at=jobqueue.utcnow(), updated_at=jobqueue.utcnow())
    job = jobqueue.claim("w", 3)
    assert job is not None
    run_settings = dataclasses.replace(settings, playbook_dir=PLAYBOOKS, inventory=inventory(tmp_path),
                                       var_dir=tmp_path)
    return JobRun(run_settings, "w", 3), engine.Plan(job, "sleep.yml", "localhost", [])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("owner", "name", "error", "message"), [
    (jobqueue, "renew", OSError("database is gone"), "canceled: lease renewal failed: OSError"),
    (engine, "record_event", RuntimeError("disk full"), "canceled: recording an event failed: RuntimeError"),
], ids=["heartbeat", "event"])
def test_a_supervisor_that_fails_cancels_the_run(client, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 owner: object, name: str, error: Exception, message: str) -> None:
    """sleep.yml runs for 30 s: only a cancel ends it as `canceled`."""
    run, plan = _plan(settings, tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(owner, name, broken)
    result, _ = run.run(plan)
    assert result.status == "canceled" and result.message == message


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_cloudflare_token_reaches_the_playbook_as_a_file_only(client, settings, tmp_path: Path) -> None:
    token = "cf-worker-token-5b4a3c2d1e"
    run, plan = _plan(settings, tmp_path)
    out = tmp_path / "token.out"
    hosts = tmp_path / "token-hosts.yml"
    hosts.write_text(f"all:\n  hosts:\n    localhost:\n      ansible_connection: local\n      output_file: {out}\n"
                     "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n")
    run.settings = dataclasses.replace(run.settings, cloudflare_api_token=token, inventory=hosts,
                                       keep_runner_data=True)
    result, _ = run.run(dataclasses.replace(plan, playbook="token.yml"))
    assert result.ok, result
    assert out.read_text() == token
    out.unlink()
    leaked = subprocess.run(["grep", "-rl", token, str(tmp_path), *map(str, Path("/dev/shm").glob("buddo-secrets-*"))],
                            capture_output=True, text=True)
    assert leaked.stdout == "", leaked.stdout
    assert token not in repr(run.settings)
