"""Lifecycle edges on the real stack: superseded jobs, restart from failed, health probing."""

from __future__ import annotations

import subprocess

from tests.e2e.conftest import Stack


def test_stop_before_the_deploy_ran_cancels_it(stack: Stack) -> None:
    image = stack.push("v1")
    created = stack.create(subdomain="e2e-early", image=image)
    ident = created["id"]
    stopped = stack.call("POST", f"/api/deploy/apps/{ident}/stop").json()["deployment"]
    stack.wait_for_audit(ident, "stop")
    entries = {e["action"]: e for e in stack.logs(ident)}
    if entries["deploy"]["status"] == "failed":  # the usual case: the stop came before the worker
        assert entries["deploy"]["details"]["reason"] == "superseded"
    assert stopped["status"] == "stopped"
    assert stack.call("GET", f"/api/deploy/apps/{ident}/status").json()["status"] == "stopped"
    assert all(c["State"] != "running" for c in stack.containers("e2e-early"))
    stack.call("POST", f"/api/deploy/apps/{ident}/restart")
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    stack.destroy(ident)
    assert stack.containers("e2e-early") == []


def test_restart_recovers_a_failed_deployment(stack: Stack) -> None:
    created = stack.create(subdomain="e2e-recover", image=f"127.0.0.1:5000/{stack.repository}:later")
    ident = created["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "failed"
    stack.push("v1", tag="later")  # the image now exists
    restarted = stack.call("POST", f"/api/deploy/apps/{ident}/restart")
    assert restarted.status_code == 200
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    assert "version v1" in stack.https("e2e-recover").stdout
    stack.destroy(ident)


def test_a_container_that_died_is_converged_again_by_the_health_probe(stack: Stack) -> None:
    image = stack.push("v1")
    ident = stack.create(subdomain="e2e-health", image=image)["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running"
    [container] = stack.containers("e2e-health")
    subprocess.run(["podman", "stop", "-t", "2", container["Id"]], check=True, capture_output=True)
    heal = stack.wait_for_entry(ident, lambda e: e["action"] == "restart" and e["initiated_by"] is None
                                and e["status"] == "completed", timeout=60)
    assert heal["details"]["reason"] == "container_exited", heal
    assert "version v1" in stack.https("e2e-health").stdout
    status = stack.call("GET", f"/api/deploy/apps/{ident}/status").json()
    assert status["status"] == "running" and status["health_status"] == "healthy"
    stack.destroy(ident)
