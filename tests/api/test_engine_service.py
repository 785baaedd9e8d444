"""The worker's state changes (services/engine.py, services/state.py), without running Ansible."""

from __future__ import annotations

import json
import threading

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import AuditEntry, Deployment, Job, JobTarget, database_proxy
from buddo_deploy.results import PlaybookResult
from buddo_deploy.services import engine

from tests.helpers import auth, converged, create_deployment, run_job


def create(client, **body):
    return create_deployment(client, **body)


def entries(ident):
    return [(e.action, e.status, json.loads(e.details) if e.details else None)
            for e in AuditEntry.select().where(AuditEntry.deployment == ident).order_by(AuditEntry.inserted_at)]


def test_start_then_success_records_running_and_digest(client, settings):
    ident = create(client, env_vars={"TOKEN": "t0ps3cret"})
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    assert plan is not None and plan.secrets == {ident: {"TOKEN": "t0ps3cret"}}
    assert "t0ps3cret" not in repr(plan.variables)
    [item] = plan.variables["converge_deployments"]
    assert item["subdomain"] == "my-app" and item["state"] == "running" and plan.playbook == "converge.yml"
    assert Deployment.get_by_id(ident).status == "deploying"
    assert engine.finish(plan, "w", converged(plan), 4.2)
    d = Deployment.get_by_id(ident)
    assert (d.status, d.health_status, d.image_digest) == ("running", "healthy", "sha256:abc")
    assert (d.generation, d.observed_generation, d.serving_port) == (1, 1, d.host_port)
    assert entries(ident)[1][:2] == ("deploy", "completed")
    assert entries(ident)[1][2]["image_digest"] == "sha256:abc"
    assert Job.get_by_id(job.id).state == "succeeded"


def test_a_first_deploy_that_fails_for_the_app_ends_failed_and_is_not_retried(client, settings):
    ident = create(client)
    run_job(settings, lambda plan: converged(plan, ok=False, kind="app", task="Run the app containers",
                                            message="image x could not be pulled"))
    d = Deployment.get_by_id(ident)
    assert (d.status, d.failed_generation) == ("failed", 1)
    action, status, details = entries(ident)[1]
    assert (action, status, details["task"]) == ("deploy", "failed", "Run the app containers")
    assert "could not be pulled" in details["message"]
    assert jobqueue.claim("w", 30) is None
    # A restart is a new generation: tried again.
    client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth())
    assert Deployment.get_by_id(ident).status == "deploying"
    run_job(settings)
    assert Deployment.get_by_id(ident).status == "running"


def test_a_failure_outside_the_app_is_retried_with_backoff(client, settings):
    ident = create(client)
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    failed = PlaybookResult(status="failed", rc=4, failed_task="Observe the containers", message="host unreachable")
    assert engine.finish(plan, "w", failed, 1.0)
    stored = Job.get_by_id(job.id)
    assert stored.state == "queued" and stored.run_after > stored.updated_at
    assert Deployment.get_by_id(ident).status == "deploying"
    action, status, details = entries(ident)[1]
    assert (action, status, details["last_error"]) == ("deploy", "running", "host unreachable")
    assert details["retrying_in_s"] > 0


def test_a_restart_that_never_answers_keeps_the_old_version_serving(client, settings):
    ident = create(client)
    run_job(settings)
    before = Deployment.get_by_id(ident)
    client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth())
    assert Deployment.get_by_id(ident).revision == before.revision + 1
    run_job(settings, lambda plan: converged(plan, ok=False, kind="app", message="app did not answer"))
    d = Deployment.get_by_id(ident)
    assert d.status == "running" and d.revision == before.revision and d.serving_port == before.serving_port
    assert d.observed_generation == d.generation == 3  # going back is a generation of its own, converged
    action, status, details = entries(ident)[-1]
    assert (action, status, details["rolled_back"]) == ("restart", "failed", True)
    assert "previous version keeps serving" in details["message"]
    assert jobqueue.claim("w", 30) is None


def test_requests_queued_behind_each_other_coalesce_and_the_superseded_say_so(client, settings):
    ident = create(client)
    run_job(settings)
    client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth())
    client.simulate_post(f"/api/deploy/apps/{ident}/stop", headers=auth())
    _, plan = run_job(settings)
    assert plan.items[0]["state"] == "stopped" and plan.items[0]["generation"] == 3
    assert [e[:2] for e in entries(ident)] == [("create", "completed"), ("deploy", "completed"),
                                               ("restart", "failed"), ("stop", "completed")]
    assert entries(ident)[2][2]["reason"] == "superseded"
    d = Deployment.get_by_id(ident)
    assert (d.status, d.serving_port) == ("stopped", None)
    assert jobqueue.claim("w", 30) is None


def test_a_destroyed_deployment_holds_its_port_until_the_teardown_converged(client, settings):
    ident = create(client)
    run_job(settings)
    client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth())
    d = Deployment.get_by_id(ident)
    assert d.status == "destroyed" and d.released_at is None
    again = create(client)  # the subdomain is free at once ...
    assert Deployment.get_by_id(again).host_port not in {d.host_port, d.host_port + 1}  # ... its ports are not
    run_job(settings)  # the teardown
    assert Deployment.get_by_id(ident).released_at is not None
    assert entries(ident)[-1][:2] == ("destroy", "completed")


def test_outcome_of_a_lost_lease_is_discarded(client, settings):
    ident = create(client)
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    Job.update(lease_owner="someone-else").where(Job.id == job.id).execute()
    assert not engine.finish(plan, "w", converged(plan), 1.0)
    assert Deployment.get_by_id(ident).status == "deploying"


def test_undecryptable_env_fails_at_once_with_a_reason(client, settings):
    ident = create(client, env_vars={"A": "b"})
    job = jobqueue.claim("w", 30)
    assert job is not None
    assert engine.start_converge(job, "w", "a different key") is None
    assert Deployment.get_by_id(ident).status == "failed"
    assert Job.get_by_id(job.id).state == "failed"
    assert "cannot be decrypted" in AuditEntry.select().where(AuditEntry.action == "deploy").get().details


def test_a_job_for_a_generation_reached_already_finishes_without_a_run(client, settings):
    ident = create(client)
    job = jobqueue.claim("w", 30)
    assert job is not None
    Deployment.update(observed_generation=1, serving_port=20000).where(Deployment.id == ident).execute()
    assert engine.start_converge(job, "w", settings.secret_key) is None
    assert Job.get_by_id(job.id).state == "succeeded"
    assert entries(ident)[1][:2] == ("deploy", "completed")


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_stop_destroy_restart_never_lose_a_write(client, settings, round_):
    ident = create(client)
    run_job(settings)
    barrier = threading.Barrier(3)
    answers: dict[str, int] = {}

    def act(name: str) -> None:
        database_proxy.obj.connect(reuse_if_open=True)
        barrier.wait()
        method, path = {"stop": ("POST", "/stop"), "restart": ("POST", "/restart"), "destroy": ("DELETE", "")}[name]
        answers[name] = client.simulate_request(method, f"/api/deploy/apps/{ident}{path}", headers=auth()).status_code
        database_proxy.obj.close()

    threads = [threading.Thread(target=act, args=(name,)) for name in ("stop", "destroy", "restart")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database_proxy.obj.connect(reuse_if_open=True)
    assert answers["destroy"] == 200
    assert set(answers.values()) <= {200, 422}
    d = Deployment.get_by_id(ident)
    assert (d.desired_state, d.status) == ("absent", "destroyed") and d.destroyed_at is not None
    accepted = [name for name, code in answers.items() if code == 200]
    assert d.generation == 1 + len(accepted)  # every accepted change is its own generation
    logged = [e[0] for e in entries(ident)][2:]
    assert sorted(logged) == sorted(accepted) and logged[-1] == "destroy"
    # One queued converge of the host holds the deployment, at its last generation.
    [target] = JobTarget.select().join(Job).where((JobTarget.deployment == ident) & (Job.state == "queued"))
    assert target.generation == d.generation
