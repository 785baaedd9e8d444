"""A worker killed with SIGKILL mid-deploy: the lease expires, another worker retries, nothing doubles."""

from __future__ import annotations

import time

from tests.e2e.conftest import Stack


def test_killed_worker_job_is_retried_and_converges(stack: Stack) -> None:
    image = stack.push("v1")
    created = stack.create(subdomain="e2e-crash", image=image)
    ident = created["id"]
    deadline = time.monotonic() + 60
    while stack.call("GET", f"/api/deploy/apps/{ident}/status").json()["status"] != "deploying":
        assert time.monotonic() < deadline, "the deploy never started"
        time.sleep(0.1)
    time.sleep(1.5)  # let ansible get going, then crash the worker and everything it started
    stack.crash_workers()

    status = stack.wait_for(ident, {"running", "failed"}, timeout=180)
    assert status["status"] == "running", stack.logs(ident)
    deploy = stack.logs(ident)[1]
    assert deploy["status"] == "completed" and deploy["details"]["attempt"] == 2
    assert len(stack.containers("e2e-crash")) == 1
    assert sorted(p.name for p in stack.sites_dir.glob("e2e-crash*")) == ["e2e-crash.caddy"]
    assert "version v1" in stack.https("e2e-crash").stdout
    stack.destroy(ident)
