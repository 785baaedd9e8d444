"""Convergence on the real stack: zero-downtime restarts, self-healing, reconcile, retried teardowns."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import Poller, Stack


@contextlib.contextmanager
def unreachable_host(stack: Stack) -> Iterator[None]:
    """The container host answers no SSH for a while (every playbook run fails as unreachable)."""
    hosts = stack.inventory / "hosts.yml"
    original = hosts.read_text()
    hosts.write_text(
        "container_hosts:\n  hosts:\n    container-host-1:\n"
        "      ansible_connection: ssh\n      ansible_host: 127.0.0.1\n      ansible_port: 9\n"
        "      buddo_host_memory_mb: 16384\n"  # `buddo-deploy reconcile` reads the inventory too
    )
    try:
        yield
    finally:
        hosts.write_text(original)


def test_restart_has_no_downtime_and_a_version_that_never_answers_changes_nothing(stack: Stack) -> None:
    image = stack.push("v1", tag="zero")
    created = stack.create(subdomain="e2e-zero", image=image)
    ident = created["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)

    stack.push("v2", tag="zero")
    with Poller(stack, "e2e-zero", ("v2", "v1")) as poll:
        assert stack.call("POST", f"/api/deploy/apps/{ident}/restart").status_code == 200
        stack.wait_for_audit(ident, "restart")
        time.sleep(0.5)
    assert len(poll.codes) > 20 and set(poll.codes) == {"200"}, poll.codes
    assert set(poll.versions) == {"v1", "v2"}
    # The new container took over the deployment's name once the old one was retired.
    assert [c["Names"][0] for c in stack.containers("e2e-zero")] == [created["container_name"]]

    # The tag now points at an image whose app listens on another port: it never answers.
    stack.push("v3-deaf", tag="zero", port=4999)
    with Poller(stack, "e2e-zero", ("v2", "v1")) as poll:
        stack.call("POST", f"/api/deploy/apps/{ident}/restart")
        entry = stack.wait_for_entry(ident, lambda e: e["action"] == "restart" and e["status"] == "failed")
    assert set(poll.codes) == {"200"} and set(poll.versions) == {"v2"}, (poll.codes, set(poll.versions))
    assert entry["details"]["rolled_back"] is True and "previous version keeps serving" in entry["details"]["message"]
    assert "did not answer" in entry["details"]["message"]
    status = stack.call("GET", f"/api/deploy/apps/{ident}/status").json()
    assert status["status"] == "running"
    assert len(stack.containers("e2e-zero")) == 1
    # The image the old container runs was not pruned: it still starts after a reboot-like stop.
    [container] = stack.containers("e2e-zero")
    assert subprocess.run(["podman", "image", "exists", container["ImageID"]], check=False).returncode == 0
    stack.destroy(ident)


def test_a_removed_container_is_back_and_serving_within_the_probe_window(stack: Stack) -> None:
    image = stack.push("v1")
    ident = stack.create(subdomain="e2e-removed", image=image)["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running"
    restarts = ("buddo_automatic_restarts_total", (("host", "container-host-1"),))
    before = stack.metrics().get(restarts, 0.0)
    subprocess.run(["podman", "rm", "-f", *[c["Id"] for c in stack.containers("e2e-removed")]], check=True,
                   capture_output=True)
    heal = stack.wait_for_entry(ident, lambda e: e["action"] == "restart" and e["status"] == "completed",
                                timeout=60)
    assert heal["initiated_by"] is None and heal["details"]["reason"] == "container_exited"
    assert "container missing" in heal["details"]["message"]
    assert "version v1" in stack.https("e2e-removed").stdout
    assert stack.metrics()[restarts] - before >= 1  # counted by the worker's prober
    stack.destroy(ident)


def _orphans(stack: Stack, image: str) -> tuple[str, Path]:
    ghost = str(uuid.uuid4())
    container = f"e2e-orphan-{ghost[:6]}"
    instance = stack.env["BUDDO_INSTANCE"]
    subprocess.run(["podman", "run", "-d", "--name", container, "--label", "buddo.managed_by=buddo-deploy",
                    "--label", f"buddo.deployment_id={ghost}", "--label", "buddo.subdomain=e2e-orphan",
                    "--label", f"buddo.instance={instance}", image], check=True, capture_output=True)
    site = stack.sites_dir / "e2e-orphan.caddy"
    site.write_text(f"# deployment {ghost}\n# instance {instance}\n"
                    "e2e-orphan.localhost {\n\trespond \"orphan\"\n}\n")
    return container, site


def test_reconcile_restores_a_deleted_site_and_removes_orphans(stack: Stack) -> None:
    image = stack.push("v1")
    ident = stack.create(subdomain="e2e-drift", image=image)["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running"
    site = stack.sites_dir / "e2e-drift.caddy"
    site.unlink()
    container, orphan_site = _orphans(stack, image)
    before = stack.metrics()

    dry = stack.cli("reconcile", "--dry-run", "--json")
    assert dry.returncode == 3, dry.stdout + dry.stderr  # drift found, nothing changed
    report = json.loads(dry.stdout)["hosts"][0]
    drifted = {d["subdomain"]: d["drift"] for d in report["deployments"] if d["drift"]}
    assert drifted == {"e2e-drift": ["site missing"]}, report
    assert not site.exists() and orphan_site.exists()

    run = stack.cli("reconcile")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "e2e-drift (running): repaired site missing -> ok" in run.stdout
    assert f"container {container}" in run.stdout and "site e2e-orphan.caddy" in run.stdout
    assert site.exists() and not orphan_site.exists()
    assert stack.containers("e2e-orphan") == []
    assert "version v1" in stack.https("e2e-drift").stdout
    repair = stack.wait_for_entry(ident, lambda e: e["action"] == "deploy" and e["details"]
                                  and e["details"].get("reason") == "drift")
    assert repair["initiated_by"] is None and repair["status"] == "completed"
    assert repair["details"]["drift"] == ["site missing"]
    # The reconcile command's counts (a process of its own) reach /metrics.
    after, host = stack.metrics(), (("host", "container-host-1"),)

    def counted(name: str) -> float:
        return after.get((name, host), 0.0) - before.get((name, host), 0.0)

    assert counted("buddo_reconcile_drift_found_total") == 2  # the dry run's and the repair's
    assert counted("buddo_reconcile_drift_repaired_total") == 1
    assert counted("buddo_reconcile_orphans_removed_total") >= 2

    again = stack.cli("reconcile", "--json")
    assert again.returncode == 0
    assert all(not d["drift"] for d in json.loads(again.stdout)["hosts"][0]["deployments"])
    stack.destroy(ident)


def test_a_destroy_that_failed_is_retried_until_gone_and_holds_its_resources(stack: Stack) -> None:
    image = stack.push("v1")
    ident = stack.create(subdomain="e2e-retry", image=image)["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running"
    with unreachable_host(stack):
        assert stack.call("DELETE", f"/api/deploy/apps/{ident}").status_code == 200
        failing = stack.wait_for_entry(ident, lambda e: e["action"] == "destroy" and e["details"]
                                       and e["details"].get("last_error"))
        assert failing["status"] == "running" and failing["details"]["retrying_in_s"] > 0
        assert len(stack.containers("e2e-retry")) == 1
        # The subdomain is free at once; the new deployment joins the host's queued converge, which
        # tears the old one down before it starts anything.
        successor = stack.create(subdomain="e2e-retry", image=image)["id"]
        report = stack.cli("reconcile", "--json")
        assert report.returncode == 1
        unchecked = json.loads(report.stdout)["hosts"][0]["unchecked"]
        assert ident in unchecked and successor in unchecked
        time.sleep(2)
        assert stack.call("GET", f"/api/deploy/apps/{successor}/status").json()["status"] in {"pending", "deploying"}
        assert [c["Labels"]["buddo.deployment_id"] for c in stack.containers("e2e-retry")] == [ident]
    stack.wait_for_audit(ident, "destroy", timeout=120)
    assert stack.wait_for(successor, {"running", "failed"}, timeout=120)["status"] == "running"
    [container] = stack.containers("e2e-retry")
    assert container["Labels"]["buddo.deployment_id"] == successor
    assert "version v1" in stack.https("e2e-retry").stdout
    stack.destroy(successor)
