"""One-off runs through the API and the worker's side (with made-up playbook results; the real
run on Podman: tests/e2e/test_runs.py)."""

from __future__ import annotations

import json

import falcon.testing
import pytest
from buddo_deploy import jobqueue
from buddo_deploy.app import create_app
from buddo_deploy.models import AuditEntry, Deployment, Job, Run, database_proxy
from buddo_deploy.results import PlaybookResult
from buddo_deploy.services import runs

from tests.helpers import auth, create_body, create_deployment, digest, make_settings, migrate, run_job

SECRET_ARG = "hunter2-in-argv"


def served(client, settings) -> str:
    """A deployment that has run once (a release to run)."""
    ident = create_deployment(client, env_vars={"API_KEY": "s3cr3t-7f1e"})
    run_job(settings)
    assert Deployment.get_by_id(ident).image_digest
    return ident


def start(client, ident: str, operator: str = "operator-1", **body) -> object:
    return client.simulate_post(f"/api/deploy/apps/{ident}/runs", headers=auth(operator),
                                json={"command": ["sh", "-c", f"echo {SECRET_ARG}"], **body})


def test_a_run_is_queued_readable_and_one_at_a_time(client, settings):
    ident = served(client, settings)
    resp = start(client, ident, timeout_s=20)
    assert resp.status_code == 202, resp.text
    run = resp.json["run"]
    assert (run["state"], run["timeout_s"], run["exit_code"], run["output"]) == ("queued", 20, None, [])
    assert resp.headers["Location"] == f"/api/deploy/apps/{ident}/runs/{run['id']}"
    assert client.simulate_get(resp.headers["Location"], headers=auth()).json["run"] == run
    assert [r["id"] for r in client.simulate_get(f"/api/deploy/apps/{ident}/runs", headers=auth()).json["runs"]] == [
        run["id"]]
    again = start(client, ident)
    assert again.status_code == 429 and again.json["error"]["code"] == "run_limit_reached"
    # The command is a secret: stored encrypted, not in the job, not in the answer.
    [job] = Job.select().where(Job.action == "run")
    assert (job.lock_key, job.host, job.timeout_s) == (f"run/{run['id']}", "container-host-1", 20 + 300)
    assert SECRET_ARG not in (job.result or "") and SECRET_ARG not in resp.text
    assert SECRET_ARG not in Run.get_by_id(run["id"]).command_encrypted
    # Another operator's runs are not theirs to read or start.
    assert client.simulate_get(resp.headers["Location"], headers=auth("operator-2")).status_code == 403
    assert start(client, ident, operator="operator-2").status_code == 403


def test_a_wait_answers_at_its_end_with_the_state_then(client, settings):
    ident = served(client, settings)
    location = start(client, ident).headers["Location"]
    waited = client.simulate_get(location, params={"wait": "1"}, headers=auth())
    assert waited.status_code == 200 and waited.json["run"]["state"] == "queued"
    assert client.simulate_get(location, params={"wait": "61"}, headers=auth()).status_code == 422


@pytest.mark.parametrize("body", [
    {"command": []}, {"command": "ls"}, {"command": [1]}, {"command": ["ls"], "timeout_s": 0},
    {"command": ["ls"], "timeout_s": 3601}, {"command": ["x" * 4097]}, {"command": ["a\x00b"]},
    {"command": ["ls"] * 33}, {"command": ["ls"], "env": {"A": "b"}},
])
def test_bad_runs_are_422_and_queue_nothing(client, settings, body):
    ident = served(client, settings)
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/runs", json=body, headers=auth())
    assert resp.status_code == 422, (body, resp.text)
    assert Run.select().count() == 0


def test_a_deployment_that_never_ran_or_is_destroyed_has_nothing_to_run(client, settings):
    fresh = create_deployment(client, subdomain="fresh")
    resp = start(client, fresh)
    assert resp.status_code == 422 and resp.json["error"]["code"] == "no_release"
    ident = served(client, settings)
    assert client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth()).status_code == 200
    assert start(client, ident).json["error"]["code"] == "deployment_destroyed"


def _run_through_worker(settings, stats: dict | None, status: str = "successful") -> Run:
    job = jobqueue.claim("w", 30)
    assert job is not None and job.action == "run"
    plan = runs.start(job, "w", settings.secret_key)
    assert plan is not None
    request = plan.variables["run_request"]
    # The command and the env reach the run through its secret file, never the extra vars.
    assert SECRET_ARG not in json.dumps(plan.variables)
    assert plan.secrets[f"command:{request['run_id']}"] == ["sh", "-c", f"echo {SECRET_ARG}"]
    assert Run.get_by_id(request["run_id"]).state == "running"
    runs.finish(plan, "w", PlaybookResult(status=status, rc=0, stats={"buddo_run": stats} if stats else {},
                                          message=None if stats else "host unreachable"))
    return Run.get_by_id(request["run_id"])


@pytest.mark.parametrize(("stats", "state", "code"), [
    ({"exit_code": 0, "timed_out": False, "error": "", "lines": []}, "succeeded", 0),
    ({"exit_code": 3, "timed_out": False, "error": "", "lines": []}, "failed", 3),
    ({"exit_code": None, "timed_out": True, "error": "", "lines": []}, "timed_out", None),
    ({"exit_code": None, "timed_out": False, "error": "image gone", "lines": []}, "error", None),
    (None, "error", None),
])
def test_the_worker_records_how_a_run_ended(client, settings, stats, state, code):
    ident = served(client, settings)
    start(client, ident)
    if stats is not None:
        stats["lines"] = [{"at": "2026-12-06T10:00:00Z", "stream": "stdout", "text": "key s3cr3t-7f1e"}]
    run = _run_through_worker(settings, stats, "successful" if stats else "failed")
    assert (run.state, run.exit_code) == (state, code)
    out = client.simulate_get(f"/api/deploy/apps/{ident}/runs/{run.id}", headers=auth()).json["run"]
    assert "s3cr3t-7f1e" not in json.dumps(out)  # env values masked, a second time
    entry = AuditEntry.select().where((AuditEntry.deployment == ident) & (AuditEntry.action == "run")).get()
    assert entry.status == ("completed" if state == "succeeded" else "failed")
    details = json.loads(entry.details)
    assert details["run_id"] == str(run.id) and details["state"] == state and SECRET_ARG not in entry.details
    # Finished: the next run may start.
    assert start(client, ident).status_code == 202



def test_a_run_holds_its_deployments_memory_on_the_host_while_it_is_active(tmp_path, backend):
    """A run's container has the deployment's memory beside the app's: placement counts it, and a
    run the host has no room for is refused (503), so runs never overcommit a host."""
    inventory = tmp_path / "inv"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text("container_hosts:\n  hosts:\n    container-host-1:\n"
                                         "      buddo_host_memory_mb: 512\n")
    settings = make_settings(tmp_path, backend, inventory=inventory)
    migrate(settings)
    client = falcon.testing.TestClient(create_app(settings))
    ident = served(client, settings)  # buddo-starter: 256 MB
    run = start(client, ident)
    assert run.status_code == 202, run.text
    full = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="second"), headers=auth())
    assert full.status_code == 503 and full.json["error"]["code"] == "capacity_exhausted"
    Run.update(state="succeeded").where(Run.id == run.json["run"]["id"]).execute()  # it ended: its room is free
    second = create_deployment(client, subdomain="second")
    Deployment.update(image_digest=digest(2)).where(Deployment.id == second).execute()  # as if it ran
    refused = start(client, second)
    assert refused.status_code == 503 and refused.json["error"]["code"] == "capacity_exhausted", refused.text
    assert refused.json["error"]["details"] == {"memory_mb": 256}
    assert Run.select().count() == 1
    database_proxy.obj.close()
