"""A job run is never left unsupervised: a failing heartbeat or event recorder cancels ansible-playbook."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Job
from buddo_deploy.services import engine
from buddo_deploy.worker import JobRun

from tests.integration.test_runner import PLAYBOOKS, inventory


def _plan(settings, tmp_path):
    with Job._meta.database.atomic():
        Job.create(action="reconcile", host="localhost", lock_key="localhost/", timeout_s=120,
                   run_after=jobqueue.utcnow(), created_at=jobqueue.utcnow(), updated_at=jobqueue.utcnow())
    job = jobqueue.claim("w", 3)
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
