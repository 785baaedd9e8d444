"""The deploy log: audit entries link their job; GET .../jobs/{job_id} shows its run and playbook events."""

from __future__ import annotations

from buddo_deploy import jobqueue
from buddo_deploy.results import EventSummary
from buddo_deploy.schemas import JobEnvelope, LogList
from buddo_deploy.services import engine

from tests.helpers import auth, converged, create_deployment

FAILED_TASK = "Start what should run"


def _run_failing_deploy(settings):
    """Claim the deploy job, record the events a failed run sends, and record the app's failure."""
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    events = [
        EventSummary("playbook_on_play_start", None, None, None, "Converge deployments"),
        EventSummary("playbook_on_task_start", None, "Observe the host", None, None),
        EventSummary("runner_on_ok", "container-host-1", "Observe the host", "ok", None),
        EventSummary("playbook_on_task_start", None, FAILED_TASK, None, None),
        EventSummary("runner_on_failed", "container-host-1", FAILED_TASK, "failed",
                     "image 127.0.0.1:5000/x:v9 could not be pulled"),
        EventSummary("playbook_on_stats", None, None, None, '{"ok": 1}'),
    ]
    for summary in events:
        engine.record_event(job, summary)
    result = converged(plan, ok=False, kind="app", task=FAILED_TASK, message="image could not be pulled")
    assert engine.finish(plan, "w", result, 3.0)
    return job, events


def test_a_failed_deploy_links_its_job_and_shows_the_failed_task(client, settings):
    ident = create_deployment(client)
    job, events = _run_failing_deploy(settings)

    logs = client.simulate_get(f"/api/deploy/apps/{ident}/logs", headers=auth())
    LogList.model_validate(logs.json)
    create, deploy = logs.json["logs"]
    assert create["job_id"] is None  # completed at once, nothing ran
    assert (deploy["action"], deploy["status"], deploy["job_id"]) == ("deploy", "failed", job.id)

    resp = client.simulate_get(f"/api/deploy/apps/{ident}/jobs/{deploy['job_id']}", headers=auth())
    assert resp.status_code == 200, resp.text
    assert resp.headers["RateLimit-Limit"] == "30"
    body = JobEnvelope.model_validate(resp.json).job
    assert (body.id, str(body.deployment_id), body.action, body.state) == (job.id, ident, "converge", "failed")
    assert (body.attempts, body.generation, body.failed_task) == (1, 1, FAILED_TASK)
    assert body.last_error == "image could not be pulled"
    assert body.started_at is not None and body.finished_at is not None and body.duration_s is not None
    assert body.run_after is None and body.next_cursor is None
    assert [(e.event, e.task, e.status) for e in body.events] == [(e.event, e.task, e.status) for e in events]
    failed = [e for e in body.events if e.status == "failed"]
    assert [(e.task, e.host, e.attempt) for e in failed] == [(FAILED_TASK, "container-host-1", 1)]
    assert "could not be pulled" in failed[0].message


def test_events_are_paged_oldest_first(client, settings):
    ident = create_deployment(client)
    job, events = _run_failing_deploy(settings)
    seen, cursor = [], None
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = client.simulate_get(f"/api/deploy/apps/{ident}/jobs/{job.id}", params=params, headers=auth())
        assert page.status_code == 200, page.text
        seen += [e["event"] for e in page.json["job"]["events"]]
        cursor = page.json["job"]["next_cursor"]
        if cursor is None:
            break
    assert seen == [e.event for e in events]


def test_a_queued_retry_shows_when_it_runs_next(client, settings):
    ident = create_deployment(client)
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    engine.record_event(job, EventSummary("runner_on_unreachable", "container-host-1", "Gathering Facts",
                                          "unreachable", "ssh: connect to host: Connection refused"))
    assert engine.finish(plan, "w", converged(plan, ok=False, kind="host", message="host down"), 1.0)
    body = client.simulate_get(f"/api/deploy/apps/{ident}/jobs/{job.id}", headers=auth()).json["job"]
    assert (body["state"], body["attempts"], body["last_error"]) == ("queued", 1, "host down")
    assert body["run_after"] and body["duration_s"] is None and body["failed_task"] == "Gathering Facts"


def test_another_operators_job_is_403_and_other_jobs_are_404(client, settings):
    ident = create_deployment(client, operator="owner")
    job, _ = _run_failing_deploy(settings)
    other = create_deployment(client, operator="owner", subdomain="other-app")  # not a target of that run
    path = f"/api/deploy/apps/{ident}/jobs/{job.id}"
    denied = client.simulate_get(path, headers=auth("intruder"))
    assert denied.status_code == 403 and denied.json["error"]["code"] == "forbidden"
    # The intruder's own deployment does not open someone else's job either.
    mine = create_deployment(client, operator="intruder", subdomain="mine")
    for owner, path in (("intruder", f"/api/deploy/apps/{mine}/jobs/{job.id}"),
                        ("owner", f"/api/deploy/apps/{other}/jobs/{job.id}"),
                        ("owner", f"/api/deploy/apps/{ident}/jobs/999999"),
                        ("owner", f"/api/deploy/apps/{ident}/jobs/abc"),
                        ("owner", f"/api/deploy/apps/{ident}/jobs/%C2%B2"),
                        ("owner", f"/api/deploy/apps/{ident}/jobs/{'9' * 40}")):
        resp = client.simulate_get(path, headers=auth(owner))
        assert resp.status_code == 404, path
        assert resp.json["error"]["code"] == "job_not_found"


def test_bad_paging_parameters_are_422(client, settings):
    ident = create_deployment(client)
    job, _ = _run_failing_deploy(settings)
    for params in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"limit": "²"}, {"cursor": "-1"},
                   {"cursor": "abc"}):
        resp = client.simulate_get(f"/api/deploy/apps/{ident}/jobs/{job.id}", params=params, headers=auth())
        assert resp.status_code == 422, params
        assert resp.json["error"]["details"][0]["field"] in {"limit", "cursor"}


def test_job_reads_have_the_read_rate_limit(client_with, settings):
    client = client_with(rate_limit_read=2)
    ident = create_deployment(client)
    job, _ = _run_failing_deploy(settings)
    codes = [client.simulate_get(f"/api/deploy/apps/{ident}/jobs/{job.id}", headers=auth()).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]


def test_a_failure_the_playbook_reported_per_deployment_names_its_task(client, settings):
    """Per-deployment failures are ignore_errors tasks in converge (the others on the host go on)."""
    first = create_deployment(client)
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    engine.record_event(job, EventSummary("runner_on_failed", "container-host-1", "Probe something", "ignored", ""))
    assert engine.finish(plan, "w", converged(plan), 1.0)
    assert client.simulate_get(f"/api/deploy/apps/{first}/jobs/{job.id}", headers=auth()).json[
        "job"]["failed_task"] is None  # succeeded: an ignored error is no failure

    second = create_deployment(client, subdomain="second")
    job = jobqueue.claim("w", 30)
    assert job is not None
    plan = engine.start_converge(job, "w", settings.secret_key)
    engine.record_event(job, EventSummary("runner_on_failed", "container-host-1", FAILED_TASK, "ignored", ""))
    assert engine.finish(plan, "w", converged(plan, ok=False, kind="app", task=FAILED_TASK,
                                              message="image x could not be pulled"), 1.0)
    body = client.simulate_get(f"/api/deploy/apps/{second}/jobs/{job.id}", headers=auth()).json["job"]
    assert (body["state"], body["failed_task"], body["last_error"]) == ("failed", FAILED_TASK,
                                                                      "image x could not be pulled")
