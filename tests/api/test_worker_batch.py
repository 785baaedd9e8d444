"""A batch: the queued converges of one host in one playbook run, each job with its own outcome and log.

The worker runs for real (claim, start, lease, events, finish, metrics); only the
playbook run is made up (worker.run_playbook), as the converge role would report it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from buddo_deploy import worker
from buddo_deploy.models import AuditEntry, Deployment, Job, JobEvent
from buddo_deploy.runner import EventSummary, PlaybookResult, _summarise

from tests.helpers import auth, create_deployment

TASK = "Run the app containers"


def _outcome(item: dict[str, Any], ok: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"ok": ok, "state": item["state"], "drift": [], "generation": item["generation"], **extra}
    if ok:
        body["container"] = {"id": f"c-{item['subdomain']}", "name": item["container_name"],
                             "host_port": item["host_ports"][0], "image_digest": "sha256:abc"}
    return body


class FakeRuns:
    """Stands for run_playbook: records each run's document, reports what ``report`` makes of it."""

    def __init__(self, report: Any) -> None:
        self.report = report
        self.runs: list[dict[str, Any]] = []

    def __call__(self, playbook: Any, inventory: Any, extravars: dict[str, Any], *, secrets: Any = None,
                 on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        items = extravars["converge_deployments"]
        self.runs.append({"playbook": playbook.name, "subdomains": [i["subdomain"] for i in items],
                          "secrets": dict(secrets or {}), "timeout_s": kwargs["timeout_s"]})
        result: PlaybookResult = self.report(items)
        failed = [i["subdomain"] for i in items if not result.stats.get("buddo_outcomes", {}).get(i["id"], {}).get(
            "ok", True)]
        on_event(EventSummary("playbook_on_task_start", None, TASK, None, None))
        on_event(EventSummary("runner_on_failed", "container-host-1", TASK, "ignored", "One or more items failed",
                              items=tuple(failed)))
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
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) if i["subdomain"] != "b" else _outcome(
            i, ok=False, kind="app", task=TASK, message="image x could not be pulled") for i in items}}))
    monkeypatch.setattr(worker, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()

    [run] = runs.runs
    assert run["playbook"] == "converge.yml" and run["subdomains"] == ["a", "b", "c"]
    assert run["secrets"] == {batch[s]: {"TOKEN": f"secret-{s}"} for s in "abc"}
    assert [Deployment.get_by_id(batch[s]).status for s in "abcd"] == ["running", "failed", "running", "pending"]
    assert [_job(batch[s]).state for s in "abcd"] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert "could not be pulled" in _job(batch["b"]).last_error
    # Each job's log is the run it was part of; the failed item's event is b's only.
    start, stats = ("playbook_on_task_start", None), ("playbook_on_stats", None)
    assert _events(batch["a"]) == _events(batch["c"]) == [start, stats]
    assert _events(batch["b"]) == [start, ("runner_on_failed", "ignored"), stats]
    assert _events(batch["d"]) == []
    # The deploy log links each deployment's own job, and its job view works.
    for sub in "abc":
        [entry] = AuditEntry.select().where((AuditEntry.deployment == batch[sub]) & (AuditEntry.action == "deploy"))
        assert entry.job_id == _job(batch[sub]).id
        assert entry.status == ("failed" if sub == "b" else "completed")
        shown = client.simulate_get(f"/api/deploy/apps/{batch[sub]}/jobs/{entry.job_id}", headers=auth(f"op-{sub}"))
        assert shown.status_code == 200
        assert shown.json["job"]["failed_task"] == (TASK if sub == "b" else None)
    assert json.loads(AuditEntry.get((AuditEntry.deployment == batch["b"])
                                     & (AuditEntry.action == "deploy")).details)["task"] == TASK


def test_a_run_that_failed_retries_every_job_of_the_batch(client, settings, batch, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="failed", rc=4, failed_task="Observe the containers",
                                                 message="host unreachable"))
    monkeypatch.setattr(worker, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert len(runs.runs) == 1
    for sub in "abc":
        job = _job(batch[sub])
        assert (job.state, job.last_error, job.lease_owner) == ("queued", "host unreachable", None)
        assert job.run_after > job.updated_at  # its own backoff
        assert Deployment.get_by_id(batch[sub]).status == "deploying"


def test_a_deployment_missing_from_the_outcomes_retries_alone(client, settings, batch, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) for i in items if i["subdomain"] != "c"}}))
    monkeypatch.setattr(worker, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert [_job(batch[s]).state for s in "abc"] == ["succeeded", "succeeded", "queued"]


def test_a_batch_of_one_runs_each_converge_on_its_own(client, settings, batch, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) for i in items}}))
    monkeypatch.setattr(worker, "run_playbook", runs)
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
