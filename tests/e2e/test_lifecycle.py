"""The README walk-through on the real stack: API -> worker -> ansible-runner -> Podman + Caddy."""

from __future__ import annotations

import time

from tests.e2e.conftest import HTTPS_PORT, Stack


def test_create_restart_stop_destroy(stack: Stack) -> None:
    image = stack.push("v1")
    created = stack.create(subdomain="e2e-life", image=image, env_vars={"GREETING": "hello"})
    ident = created["id"]
    assert created["status"] == "pending"
    status = stack.wait_for(ident, {"running", "failed"})
    assert status["status"] == "running", stack.logs(ident)
    assert status["health_status"] == "healthy" and status["last_health_check"]

    page = stack.https("e2e-life")
    assert page.stdout.endswith("\n200"), page
    assert "version v1" in page.stdout
    # HTTP redirects to the same URL on the (non-standard) HTTPS port.
    assert stack.http_redirect("e2e-life", "/a/b?c=1") == f"308 https://e2e-life.localhost:{HTTPS_PORT}/a/b?c=1"

    [container] = stack.containers("e2e-life")
    config = stack.inspect(container["Id"])
    assert config["HostConfig"]["Memory"] == 1024 * 1024 * 1024  # btc-pro: 1024 MB
    assert config["HostConfig"]["NanoCpus"] == 1_000_000_000  # 1000 millicores
    assert "GREETING=hello" in config["Config"]["Env"]
    assert config["Config"]["Labels"]["buddo.deployment_id"] == ident

    stack.push("v2")
    restarted = stack.call("POST", f"/api/deploy/apps/{ident}/restart")
    assert restarted.status_code == 200 and restarted.json()["deployment"]["status"] == "deploying"
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    assert "version v2" in stack.https("e2e-life").stdout
    assert len(stack.containers("e2e-life")) == 1

    stopped = stack.call("POST", f"/api/deploy/apps/{ident}/stop")
    assert stopped.json()["deployment"]["status"] == "stopped"
    stack.wait_for_audit(ident, "stop")
    [container] = stack.containers("e2e-life")
    assert stack.inspect(container["Id"])["State"]["Running"] is False
    assert stack.https("e2e-life").stdout.rsplit("\n", 1)[-1] in {"502", "503"}

    stack.call("POST", f"/api/deploy/apps/{ident}/restart")
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    assert "version v2" in stack.https("e2e-life").stdout

    destroyed = stack.call("DELETE", f"/api/deploy/apps/{ident}")
    assert destroyed.json() == {"message": "Deployment destroyed", "id": ident}
    stack.wait_for_audit(ident, "destroy")
    assert stack.containers("e2e-life") == []
    assert not (stack.sites_dir / "e2e-life.caddy").exists()
    assert stack.https("e2e-life").stdout.rsplit("\n", 1)[-1] != "200"

    actions = [(e["action"], e["status"]) for e in stack.logs(ident)]
    assert actions == [
        ("create", "completed"), ("deploy", "completed"), ("restart", "completed"), ("stop", "completed"),
        ("restart", "completed"), ("destroy", "completed"),
    ]
    deploy = stack.logs(ident)[1]
    assert deploy["details"]["image_digest"].startswith("sha256:")

    again = stack.create(subdomain="e2e-life", image=image)
    assert stack.wait_for(again["id"], {"running", "failed"})["status"] == "running"
    stack.destroy(again["id"])


def test_missing_image_fails_with_a_reason(stack: Stack) -> None:
    created = stack.create(subdomain="e2e-missing", image="127.0.0.1:5000/e2e/does-not-exist:v9")
    status = stack.wait_for(created["id"], {"running", "failed"})
    assert status["status"] == "failed"
    deploy = stack.logs(created["id"])[1]
    assert deploy["action"] == "deploy" and deploy["status"] == "failed"
    assert deploy["details"]["task"] and "does-not-exist" in deploy["details"]["message"]
    assert stack.containers("e2e-missing") == []

    # The deploy log: the job the entry links to, with the playbook's events up to the failed task.
    # The entry is closed when the run reports, a moment before the run (and the job) ends.
    deadline = time.monotonic() + 30
    while (job := stack.call("GET", f"/api/deploy/apps/{created['id']}/jobs/{deploy['job_id']}").json()["job"])[
            "duration_s"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (job["state"], job["action"], job["failed_task"]) == ("failed", "converge", deploy["details"]["task"])
    assert "does-not-exist" in job["last_error"] and job["duration_s"] is not None
    tasks = [e["task"] for e in job["events"] if e["event"] == "playbook_on_task_start"]
    # One module run observes, plans and acts; the outcome names its step that failed.
    assert "Converge the deployments of this host" in tasks and deploy["details"]["task"] == "Run the app containers"
    # The app's own failure is its outcome's, not the run's: the task itself did not fail.
    assert not [e for e in job["events"] if e["status"] in {"failed", "ignored", "unreachable"}]
    assert job["events"][-1]["event"] == "playbook_on_stats"

    # The worker's counts reach /metrics through the API (one directory, var/metrics).
    samples = stack.metrics()
    assert samples[("buddo_jobs_total", (("action", "converge"), ("outcome", "failed")))] >= 1
    assert samples[("buddo_deployments", (("health", "unhealthy"), ("status", "failed")))] >= 1


def test_app_that_never_listens_fails_after_the_wait(stack: Stack) -> None:
    image = stack.push("v1", tag="deaf")
    created = stack.create(subdomain="e2e-deaf", image=image, port=4999)  # the app listens on 3000
    status = stack.wait_for(created["id"], {"running", "failed"})
    assert status["status"] == "failed"
    details = stack.logs(created["id"])[1]["details"]
    assert "4999" in details["message"] or "answer" in details["message"], details
