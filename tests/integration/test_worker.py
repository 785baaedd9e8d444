"""A job run is never left unsupervised: a failing heartbeat or event recorder cancels ansible-playbook."""

from __future__ import annotations

import dataclasses
import time
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
def test_a_heartbeat_that_cannot_reach_the_database_cancels_the_run(client, settings, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run, plan = _plan(settings, tmp_path)

    def broken(*args: object, **kwargs: object) -> bool:
        raise OSError("database is gone")

    monkeypatch.setattr(jobqueue, "renew", broken)
    started = time.monotonic()
    result, _ = run.run(plan)
    assert result.status == "canceled" and result.message == "canceled: lease renewal failed: OSError"
    assert time.monotonic() - started < 20  # sleep.yml would take far longer


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_event_that_cannot_be_recorded_cancels_the_run(client, settings, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run, plan = _plan(settings, tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(engine, "record_event", broken)
    result, _ = run.run(plan)
    assert result.status == "canceled" and result.message == "canceled: recording an event failed: RuntimeError"
