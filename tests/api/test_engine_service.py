"""The worker's state changes (services/engine.py), without running Ansible."""

from __future__ import annotations

from buddo_deploy import jobqueue
from buddo_deploy.models import AuditEntry, Deployment, Job
from buddo_deploy.runner import PlaybookResult
from buddo_deploy.services import engine

from tests.helpers import auth, create_body


def create(client, **body):
    resp = client.simulate_post("/api/deploy/apps", json=create_body(**body), headers=auth())
    return resp.json["deployment"]["id"]


def test_start_then_success_records_running_and_digest(client, settings):
    ident = create(client, env_vars={"TOKEN": "t0ps3cret"})
    job = jobqueue.claim("w", 30)
    plan = engine.start(job, "w", settings.secret_key)
    assert plan is not None and plan.secrets == {"TOKEN": "t0ps3cret"}
    assert "t0ps3cret" not in repr(plan.extravars)
    assert plan.extravars["deployment_subdomain"] == "my-app" and plan.playbook == "deploy.yml"
    assert Deployment.get_by_id(ident).status == "deploying"
    assert AuditEntry.get_by_id(job.audit_entry_id).status == "running"
    result = PlaybookResult(status="successful", rc=0, stats={"deployment_image_digest": "sha256:abc"})
    assert engine.finish(plan, "w", result, 4.2)
    deployment = Deployment.get_by_id(ident)
    assert (deployment.status, deployment.health_status, deployment.image_digest) == ("running", "healthy",
                                                                                       "sha256:abc")
    assert AuditEntry.get_by_id(job.audit_entry_id).status == "completed"


def test_failure_records_task_and_message(client, settings):
    ident = create(client)
    job = jobqueue.claim("w", 30)
    plan = engine.start(job, "w", settings.secret_key)
    result = PlaybookResult(status="failed", rc=2, failed_task="Run container", message="image x not found")
    assert engine.finish(plan, "w", result, 1.0)
    assert Deployment.get_by_id(ident).status == "failed"
    entry = AuditEntry.get_by_id(job.audit_entry_id)
    assert entry.status == "failed"
    assert '"task": "Run container"' in entry.details and "image x not found" in entry.details


def test_outcome_of_a_lost_lease_is_discarded(client, settings):
    ident = create(client)
    job = jobqueue.claim("w", 30)
    plan = engine.start(job, "w", settings.secret_key)
    Job.update(lease_owner="someone-else").where(Job.id == job.id).execute()
    assert not engine.finish(plan, "w", PlaybookResult(status="successful", rc=0), 1.0)
    assert Deployment.get_by_id(ident).status == "deploying"


def test_undecryptable_env_fails_at_once_with_a_reason(client, settings):
    ident = create(client, env_vars={"A": "b"})
    job = jobqueue.claim("w", 30)
    assert engine.start(job, "w", "a different key") is None
    assert Deployment.get_by_id(ident).status == "failed"
    assert Job.get_by_id(job.id).state == "failed"
    assert "cannot be decrypted" in AuditEntry.get_by_id(job.audit_entry_id).details
