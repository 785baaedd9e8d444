"""App output (issue 10): validation, the job a worker answers, masking, timeout."""

from __future__ import annotations

import json
import threading

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Job, JobEvent
from buddo_deploy.runner import PlaybookResult
from buddo_deploy.services import engine, output

from tests.helpers import auth, create_deployment, run_job


@pytest.mark.parametrize("params", [
    {"tail": "0"}, {"tail": "5001"}, {"tail": "²"}, {"tail": "ten"},
    {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}, {"since": "2026-13-01T00:00:00Z"},
])
def test_bad_tail_and_since_are_422_and_queue_nothing(client, params):
    ident = create_deployment(client)
    before = Job.select().count()
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", params=params, headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_failed", resp.text
    assert Job.select().count() == before


def test_another_operator_403_and_destroyed_422(client, settings):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth("operator-2"))
    assert resp.status_code == 403
    client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth())
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "deployment_destroyed"


def answer(settings, lines, ok=True):
    """Act as the worker: claim the output job, 'run' output.yml, record what it returned."""
    job = None
    while job is None or job.action != "output":
        [job] = jobqueue.claim("w", 30)
        if job is not None and job.action != "output":
            jobqueue.finish(job, "w", succeeded=True)
    plan = engine.start(job, "w", settings.secret_key)
    assert plan is not None and plan.playbook == "output.yml"
    variables = plan.extravars("buddo")
    stats = {"buddo_output": {"lines": lines, "container": {"id": "c1", "name": "x", "state": "exited",
                                                            "exit_code": 3}}}
    result = PlaybookResult(status="successful" if ok else "failed", rc=0 if ok else 2, stats=stats if ok else {},
                            message=None if ok else "host unreachable")
    output.finish(job, "w", result, plan.secrets, settings.output_wait_s)
    return job, variables, plan


def test_output_is_read_by_a_worker_masked_and_deleted_once_read(client, settings):
    ident = create_deployment(client, env_vars={"TOKEN": "t0ps3cret-value"})
    run_job(settings)
    got = {}

    def call():
        got["resp"] = client.simulate_get(f"/api/deploy/apps/{ident}/output",
                                          params={"tail": "2", "since": "2026-01-01T01:00:00+01:00"}, headers=auth())

    caller = threading.Thread(target=call)
    caller.start()
    lines = [{"at": "2026-12-04T20:51:05.1Z", "stream": "stdout", "text": "token is t0ps3cret-value"},
             {"at": "2026-12-04T20:51:05.2Z", "stream": "stderr", "text": "crashed"}]
    job = None
    while job is None:  # the request queued its job
        job = Job.select().where(Job.action == "output").first()
    job, variables, plan = answer(settings, lines)
    caller.join()
    resp = got["resp"]
    assert resp.status_code == 200, resp.text
    assert variables["output_request"] == {"id": ident, "host": plan.host, "container_name": variables[
        "output_request"]["container_name"], "tail": 2, "since": "2026-01-01T00:00:00Z"}
    assert "t0ps3cret" not in json.dumps(variables)
    assert [(line["stream"], line["text"]) for line in resp.json["lines"]] == [
        ("stdout", "token is ********"), ("stderr", "crashed")]
    assert resp.json["container"]["exit_code"] == 3
    stored = Job.get_by_id(job.id)
    assert stored.state == "succeeded" and stored.result is None  # deleted once read
    assert not any("t0ps3cret" in (e.message or "") for e in JobEvent.select())


def test_a_failed_read_is_502_and_no_worker_is_504(client, settings, monkeypatch):
    ident = create_deployment(client)
    got = {}
    caller = threading.Thread(target=lambda: got.update(
        resp=client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth())))
    caller.start()
    while not Job.select().where(Job.action == "output").exists():
        pass
    answer(settings, [], ok=False)
    caller.join()
    assert got["resp"].status_code == 502 and got["resp"].json["error"]["code"] == "output_failed"
    assert "host unreachable" in got["resp"].json["error"]["message"]

    real_wait = output.wait
    monkeypatch.setattr(output, "wait", lambda job_id, _wait_s: real_wait(job_id, 0.3))
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth())
    assert resp.status_code == 504 and resp.json["error"]["code"] == "output_timeout"
    abandoned = Job.select().where(Job.action == "output").order_by(Job.id.desc()).first()
    assert (abandoned.state, abandoned.last_error) == ("failed", "abandoned")


def test_an_output_job_does_not_wait_behind_a_converge_nor_block_health(client, settings):
    ident = create_deployment(client)
    [converge] = jobqueue.claim("w", 30)  # the first deploy runs (and holds the deployment's lock key)
    assert converge.action == "converge"
    output.enqueue(engine.state.locked(ident), 10, None)
    [claimed] = jobqueue.claim("w2", 30)
    assert claimed.action == "output"


def test_a_since_before_the_epoch_asks_for_every_line():
    from buddo_deploy.schemas import OutputQuery

    assert OutputQuery.model_validate({"since": "0001-01-01T00:00:00Z"}).since is None
    assert OutputQuery.model_validate({"since": "2026-01-01T00:00:00Z"}).since is not None
