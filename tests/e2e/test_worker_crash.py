"""A worker killed with SIGKILL mid-deploy: the lease expires, another worker retries, nothing doubles."""

from __future__ import annotations

import time

from tests.e2e.conftest import Stack, push_busybox_image

# An app that answers only 4 s after it starts: the run is surely still waiting for it when the
# worker is killed (a deploy of an app that answers at once can be over before any crash).
SLOW = "/bin/busybox sleep 4; mkdir -p /tmp/www; echo version v1 > /tmp/www/index.html; " \
       "exec /bin/busybox httpd -f -p 3000 -h /tmp/www"


def test_killed_worker_job_is_retried_and_converges(stack: Stack) -> None:
    image = push_busybox_image("slow", SLOW, {})
    created = stack.create(subdomain="e2e-crash", image=image)
    ident = created["id"]
    deadline = time.monotonic() + 60
    while not stack.containers("e2e-crash"):  # the run made the container and waits for the app
        assert time.monotonic() < deadline, "the deploy never started"
        time.sleep(0.1)
    stack.crash_workers()  # the worker and everything it started

    status = stack.wait_for(ident, {"running", "failed"}, timeout=180)
    assert status["status"] == "running", stack.logs(ident)
    deploy = stack.logs(ident)[1]
    assert deploy["status"] == "completed" and deploy["details"]["attempt"] == 2
    assert len(stack.containers("e2e-crash")) == 1
    assert sorted(p.name for p in stack.sites_dir.glob("e2e-crash*")) == ["e2e-crash.caddy"]
    assert "version v1" in stack.https("e2e-crash").stdout
    stack.destroy(ident)
