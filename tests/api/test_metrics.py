"""GET /metrics: counters of the API and the worker, gauges from the database, the allow-list."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import subprocess
import sys
import uuid

import falcon.testing
import pytest
from buddo_deploy import jobqueue, tasks
from buddo_deploy import worker as worker_module
from buddo_deploy.app import create_app
from buddo_deploy.models import Deployment, Job, utcnow
from buddo_deploy.results import PlaybookResult
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import auth, converged, create_deployment, run_job


def scrape(client, **kwargs) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.simulate_get("/metrics", **kwargs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_template_and_status(client):
    ident = create_deployment(client)
    before = scrape(client)
    for _ in range(3):
        assert client.simulate_get(f"/api/deploy/apps/{ident}/status", headers=auth()).status_code == 200
    assert client.simulate_get(f"/api/deploy/apps/{uuid.uuid4()}/status", headers=auth()).status_code == 404
    assert client.simulate_get("/api/deploy/nothing-here").status_code == 404
    after = scrape(client)
    status = "/api/deploy/apps/{deployment_id}/status"
    counted = value(after, "buddo_http_requests_total", method="GET", endpoint=status, status="200") - value(
        before, "buddo_http_requests_total", method="GET", endpoint=status, status="200")
    assert counted == 3
    assert value(after, "buddo_http_requests_total", method="GET", endpoint=status, status="404") - value(
        before, "buddo_http_requests_total", method="GET", endpoint=status, status="404") == 1
    assert value(after, "buddo_http_requests_total", method="GET", endpoint="unmatched", status="404") - value(
        before, "buddo_http_requests_total", method="GET", endpoint="unmatched", status="404") == 1
    latency = "buddo_http_request_duration_seconds_count"
    assert value(after, latency, method="GET", endpoint=status) - value(before, latency, method="GET",
                                                                          endpoint=status) == 4
    # Route templates only: no deployment id ever becomes a label.
    assert not any(ident in str(labels) for _, labels in after)


def test_queue_and_deployments_come_from_the_database(client, settings):
    first = create_deployment(client, subdomain="first")
    run_job(settings)  # `first` is running now
    create_deployment(client, subdomain="second")  # queued
    Job.update(created_at=utcnow() - dt.timedelta(seconds=120)).where(Job.state == "queued").execute()
    samples = scrape(client)
    assert value(samples, "buddo_jobs_queued", action="converge") == 1
    assert value(samples, "buddo_jobs_queued", action="reconcile") == 0
    assert value(samples, "buddo_jobs_running", action="converge") == 0
    assert value(samples, "buddo_job_queue_oldest_age_seconds") >= 120
    assert value(samples, "buddo_deployments", status="running", health="healthy") == 1
    assert value(samples, "buddo_deployments", status="pending", health="unknown") == 1
    assert value(samples, "buddo_deployments", status="failed", health="unhealthy") == 0
    assert Deployment.get_by_id(first).status == "running"


def test_metrics_need_no_token_but_an_allowed_address(client_with):
    client = client_with()
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert client.simulate_get("/metrics", remote_addr=address).status_code == 200, address
    for address in ("10.1.2.3", "192.168.1.1", "2001:db8::1", "::ffff:10.1.2.3"):
        denied = client.simulate_get("/metrics", remote_addr=address)
        assert denied.status_code == 403, address
        assert denied.json["error"]["code"] == "forbidden" and denied.json["error"]["request_id"]
        assert "buddo_" not in denied.text
    private = client_with(metrics_allow=(ipaddress.ip_network("10.0.0.0/8"),))
    assert private.simulate_get("/metrics", remote_addr="10.1.2.3").status_code == 200
    assert private.simulate_get("/metrics", remote_addr="127.0.0.1").status_code == 403


def test_metrics_allow_must_be_networks(tmp_path):
    from buddo_deploy.settings import Settings, SettingsError

    env = {"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_METRICS_ALLOW": "10.0.0.0/8, 192.168.0.0/16"}
    assert len(Settings.from_env(env).metrics_allow) == 2
    with pytest.raises(SettingsError, match="BUDDO_METRICS_ALLOW"):
        Settings.from_env(env | {"BUDDO_METRICS_ALLOW": "10.0.0.0/8,localhost"})


def _worker_run(settings, monkeypatch, result_for):
    """Worker.run_once with the playbook run replaced by a made-up result."""

    def run(self, plan, report=None):
        return result_for(plan), 2.0

    monkeypatch.setattr(tasks.JobRun, "run", run)
    assert worker_module.Worker(settings, name="w").run_once()


def test_job_outcomes_and_durations_by_action(client, settings, monkeypatch):
    create_deployment(client)
    before = scrape(client)
    _worker_run(settings, monkeypatch, lambda plan: converged(plan, ok=False, kind="host", message="down"))
    Job.update(run_after=utcnow()).execute()  # skip the backoff
    _worker_run(settings, monkeypatch, converged)
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("buddo_jobs_total", action="converge", outcome="retried") == 1
    assert delta("buddo_jobs_total", action="converge", outcome="succeeded") == 1
    assert delta("buddo_job_duration_seconds_count", action="converge", outcome="succeeded") == 1
    assert delta("buddo_job_duration_seconds_sum", action="converge", outcome="succeeded") == 2.0


def test_reconcile_drift_and_automatic_restarts_are_counted(client, settings, monkeypatch):
    ident = create_deployment(client)
    run_job(settings)
    d = Deployment.get_by_id(ident)
    before = scrape(client)
    worker_module.queue_reconciles(settings)

    def repaired(plan):
        outcomes = {i["id"]: {"ok": True, "state": i["state"], "generation": i["generation"],
                              "drift": ["site missing"], "container": {"id": "c1", "host_port": i["host_ports"][0]}}
                    for i in plan.items}
        return PlaybookResult(status="successful", rc=0,
                              stats={"buddo_outcomes": outcomes, "buddo_orphans": ["container ghost"]})

    _worker_run(settings, monkeypatch, repaired)

    # The prober finds the container gone: one automatic restart.
    health = {d.host: {"containers": [], "probes": {}}}
    monkeypatch.setattr(worker_module, "run_playbook",
                        lambda *a, **k: PlaybookResult(status="successful", rc=0, stats={"buddo_health": health}))
    prober = worker_module.HealthProber(dataclasses.replace(settings, health_failures=3))
    assert prober.probe_host(d.host) == {ident: "restarted"}
    assert jobqueue.open_converge(Deployment.get_by_id(ident)) is not None
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("buddo_reconcile_drift_found_total", host=d.host) == 1
    assert delta("buddo_reconcile_drift_repaired_total", host=d.host) == 1
    assert delta("buddo_reconcile_orphans_removed_total", host=d.host) == 1
    assert delta("buddo_jobs_total", action="reconcile", outcome="succeeded") == 1
    assert delta("buddo_automatic_restarts_total", host=d.host) == 1


def test_an_app_built_twice_in_one_process_counts_into_one_directory(client, settings):
    """create_app is called per test and per gunicorn worker: the first directory stays bound."""
    from buddo_deploy import metrics

    first = metrics.prepare(settings.var_dir)
    app = create_app(dataclasses.replace(settings, var_dir=settings.var_dir / "elsewhere"))
    assert metrics.prepare(settings.var_dir / "other") == first
    assert falcon.testing.TestClient(app).simulate_get("/metrics").status_code == 200


def test_sweep_removes_only_the_files_of_processes_that_are_gone(tmp_path):
    from buddo_deploy import metrics

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    names = [f"counter_{gone}.db", f"histogram_{gone}.db", f"counter_{os.getpid()}.db", f"counter_{os.getppid()}.db",
             "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert metrics.sweep(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
