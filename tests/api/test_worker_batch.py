"""A batch: the queued converges of one host in one playbook run, each job with its own outcome and log.

The worker runs for real (claim, start, lease, events, finish, metrics); only the
playbook run is made up (tasks.base.run_playbook), as the converge role would report it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from buddo_deploy import worker
from buddo_deploy.models import AuditEntry, Deployment, Job, JobEvent
from buddo_deploy.results import EventSummary, PlaybookResult
from buddo_deploy.runner import _summarise
from buddo_deploy.tasks import base as tasks_base

from tests.helpers import auth, create_deployment

TASK = "Run the app containers"
SITE_TASK = "Render the Caddy sites"


def _failure(task: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": "app", "task": task, "message": message}


def _outcome(item: dict[str, Any], ok: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"ok": ok, "state": item["state"], "drift": [], "generation": item["generation"], **extra}
    if ok:
        body["container"] = {"id": f"c-{item['subdomain']}", "name": item["container_name"],
                             "host_port": item["host_ports"][0], "image_digest": "sha256:abc"}
    return body


class FakeRuns:
    """Stands for run_playbook: records each run's document, reports what ``report`` makes of it.

    Its events: a task start, an ``ignored`` event per task some deployment failed at
    (labelled with their subdomains unless the task is no_log, as "Run the app
    containers" is), the recap.
    """

    def __init__(self, report: Any) -> None:
        self.report = report
        self.runs: list[dict[str, Any]] = []

    def __call__(self, playbook: Any, inventory: Any, extravars: dict[str, Any], *, secrets: Any = None,
                 on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        items = extravars["converge_deployments"]
        self.runs.append({"playbook": playbook.name, "subdomains": [i["subdomain"] for i in items],
                          "secrets": dict(secrets or {}), "timeout_s": kwargs["timeout_s"]})
        result: PlaybookResult = self.report(items)
        outcomes = result.stats.get("buddo_outcomes", {})
        failed: dict[str, list[str]] = {}
        for i in items:
            if not outcomes.get(i["id"], {}).get("ok", True):
                failed.setdefault(outcomes[i["id"]]["task"], []).append(i["subdomain"])
        on_event(EventSummary("playbook_on_task_start", None, TASK, None, None))
        for task, subdomains in failed.items():
            on_event(EventSummary("runner_on_failed", "container-host-1", task, "ignored", "One or more items failed",
                                  items=() if task == TASK else tuple(subdomains)))
        on_event(EventSummary("playbook_on_stats", None, None, None, '{"ok": 1}'))
        return result


@pytest.fixture
def batch(client, settings):
    """Four deployments queued on container-host-1; 'd' converged already (its job needs no run)."""
    ids = {sub: create_deployment(client, f"op-{sub}", subdomain=sub, tier="btc-pro",
                                  env_vars={"TOKEN": f"secret-{sub}"}) for sub in "abcd"}
    Deployment.update(observed_generation=1, serving_port=20000).where(Deployment.id == ids["d"]).execute()
    return ids


def _job(ident: str) -> Job:
    return Job.get(Job.deployment == ident)


def _events(ident: str) -> list[tuple[str, str | None]]:
    return [(e.event, e.status) for e in JobEvent.select().where(JobEvent.job == _job(ident).id).order_by(JobEvent.id)]


def test_one_run_converges_the_batch_and_an_app_failure_fails_its_job_only(client, settings, batch, monkeypatch):
    failures = {"b": _failure(TASK, "image x could not be pulled"), "c": _failure(SITE_TASK, "bad site")}
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i, **failures.get(i["subdomain"], {})) for i in items}}))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()

    [run] = runs.runs
    assert run["playbook"] == "converge.yml" and run["subdomains"] == ["a", "b", "c"]
    assert run["secrets"] == {batch[s]: {"TOKEN": f"secret-{s}"} for s in "abc"}
    assert [Deployment.get_by_id(batch[s]).status for s in "abcd"] == ["running", "failed", "failed", "pending"]
    assert [_job(batch[s]).state for s in "abcd"] == ["succeeded", "failed", "failed", "succeeded"]
    assert "could not be pulled" in _job(batch["b"]).last_error and _job(batch["c"]).last_error == "bad site"
    # Each job's log is the run it was part of; a failure is in its own deployment's job only:
    # by its item's label when the event has one (c), else once the outcomes name it (b, no_log).
    start, stats = ("playbook_on_task_start", None), ("playbook_on_stats", None)
    ignored = ("runner_on_failed", "ignored")
    assert _events(batch["a"]) == [start, stats]
    assert _events(batch["b"]) == [start, stats, ignored]
    assert _events(batch["c"]) == [start, ignored, stats]
    assert _events(batch["d"]) == []
    # The deploy log links each deployment's own job, and its job view works.
    for sub, task in (("a", None), ("b", TASK), ("c", SITE_TASK)):
        [entry] = AuditEntry.select().where((AuditEntry.deployment == batch[sub]) & (AuditEntry.action == "deploy"))
        assert entry.job_id == _job(batch[sub]).id
        assert entry.status == ("completed" if task is None else "failed")
        shown = client.simulate_get(f"/api/deploy/apps/{batch[sub]}/jobs/{entry.job_id}", headers=auth(f"op-{sub}"))
        assert shown.status_code == 200 and shown.json["job"]["failed_task"] == task
        if task is not None:
            assert json.loads(entry.details)["task"] == task


def test_a_run_that_failed_retries_every_job_of_the_batch(client, settings, batch, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="failed", rc=4, failed_task="Observe the containers",
                                                 message="host unreachable", failed_status="unreachable"))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert len(runs.runs) == 1
    for sub in "abc":
        job = _job(batch[sub])
        assert (job.state, job.last_error, job.lease_owner) == ("queued", "host unreachable", None)
        assert job.run_after > job.updated_at  # its own backoff
        assert Deployment.get_by_id(batch[sub]).status == "deploying"


def test_nothing_of_one_tenant_reaches_a_batch_mates_log_or_audit(client, settings, batch, monkeypatch):
    """b's container cannot be removed: the run fails with a message naming b. a and c share the
    run: they are retried, and neither their job logs nor their audit entries say anything of b."""
    leak = f"1 of 3 deployment(s) failed: {batch['b']}: podman rm failed: secret-b is busy"

    def report(items: list[dict[str, Any]]) -> PlaybookResult:
        outcomes = {i["id"]: _outcome(i) for i in items}
        outcomes[batch["b"]] = {"ok": False, "kind": "host", "task": "Remove", "message": "podman rm failed: busy",
                                "state": "running", "drift": [], "generation": 1}
        return PlaybookResult(status="failed", rc=2, failed_task="Remove", message=leak, failed_status="failed",
                              stats={"buddo_outcomes": outcomes})

    runs = FakeRuns(report)

    def run(*args: Any, on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        on_event(EventSummary("runner_on_failed", "container-host-1", "Remove", "failed", leak))
        return runs(*args, on_event=on_event, **kwargs)

    monkeypatch.setattr(tasks_base, "run_playbook", run)
    assert worker.Worker(settings, name="w").run_once()
    b_id = batch["b"]
    for sub in "ac":
        job = _job(batch[sub])
        assert job.state == "queued" and b_id not in (job.last_error or "") and "secret-b" not in job.last_error
        texts = [e.message or "" for e in JobEvent.select().where(JobEvent.job == job.id)]
        assert texts and not any(b_id in t or "secret-b" in t for t in texts), texts
        details = [e.details or "" for e in AuditEntry.select().where(AuditEntry.deployment == batch[sub])]
        assert not any(b_id in d or "secret-b" in d for d in details), details
    # b's own audit entry has its own failure.
    [entry] = AuditEntry.select().where((AuditEntry.deployment == b_id) & (AuditEntry.action == "deploy"))
    assert json.loads(entry.details)["last_error"] == "podman rm failed: busy"


def test_after_a_batch_timed_out_its_jobs_run_one_by_one(client, settings, batch, monkeypatch):
    timeouts = FakeRuns(lambda items: PlaybookResult(status="timeout", rc=None, message="timed out after 600 s"))
    monkeypatch.setattr(tasks_base, "run_playbook", timeouts)
    assert worker.Worker(settings, name="w").run_once()
    assert [r["subdomains"] for r in timeouts.runs] == [["a", "b", "c"]]
    Job.update(run_after=Job.updated_at).where(Job.state == "queued").execute()  # their backoff is over
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) for i in items}}))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["a"], ["b"], ["c"]]
    assert [Deployment.get_by_id(batch[s]).status for s in "abc"] == ["running"] * 3


def test_one_lost_lease_cancels_the_batch_run_and_the_others_are_retried(client, settings, batch, monkeypatch):
    def stolen(playbook: Any, inventory: Any, extravars: dict[str, Any], **kwargs: Any) -> PlaybookResult:
        Job.update(lease_owner="thief").where(Job.deployment == batch["b"]).execute()  # b is taken over
        deadline = time.monotonic() + 30
        while not kwargs["should_cancel"]():
            assert time.monotonic() < deadline, "the run was never canceled"
            time.sleep(0.05)
        return PlaybookResult(status="canceled", rc=None, message="canceled: the job's lease was lost")

    monkeypatch.setattr(tasks_base, "run_playbook", stolen)
    assert worker.Worker(dataclasses.replace(settings, job_lease_s=1), name="w").run_once()
    assert [(_job(batch[s]).state, _job(batch[s]).lease_owner) for s in "abc"] == [
        ("queued", None), ("running", "thief"), ("queued", None)]
    assert "lease was lost" in _job(batch["a"]).last_error


def test_a_deployment_missing_from_the_outcomes_retries_alone(client, settings, batch, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) for i in items if i["subdomain"] != "c"}}))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert [_job(batch[s]).state for s in "abc"] == ["succeeded", "succeeded", "queued"]


def test_a_batch_of_one_runs_each_converge_on_its_own(client, settings, batch, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) for i in items}}))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    one = worker.Worker(dataclasses.replace(settings, converge_batch=1), name="w")
    while one.run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["a"], ["b"], ["c"]]


def test_a_failed_loop_item_names_its_label():
    item = {"failed": True, "msg": "pull failed", "_ansible_item_label": "b"}
    event = {"event": "runner_on_failed", "event_data": {
        "host": "container-host-1", "task": TASK, "ignore_errors": True,
        "res": {"msg": "One or more items failed", "results": [
            {"changed": True, "_ansible_item_label": "a"}, item, {"failed": True, "_ansible_item_label": "c"}]}}}
    summary = _summarise(event)
    assert summary is not None and (summary.status, summary.items) == ("ignored", ("b", "c"))
    ok = _summarise({"event": "runner_on_ok", "event_data": {"res": {"results": [item]}}})
    assert ok is not None and ok.items == ()
