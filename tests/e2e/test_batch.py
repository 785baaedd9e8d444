"""Changes queued for one host come up in one converge of the host; an app that fails there fails alone."""

from __future__ import annotations

import json

from tests.e2e.conftest import Stack

MISSING = "127.0.0.1:5000/e2e/does-not-exist:v9"


def _runs(stack: Stack, idents: list[str]) -> list[set[str]]:
    """The kept runs (BUDDO_KEEP_RUNNER_DATA) whose document names any of ``idents``: the ids each names."""
    runs = []
    for extravars in (stack.root / "var" / "runner").glob("*/env/extravars"):
        named = {ident for ident in idents if ident in extravars.read_text()}
        if named:
            runs.append(named)
    return runs


def test_creates_queued_together_come_up_in_one_run_and_a_bad_image_fails_alone(stack: Stack) -> None:
    image = stack.push("v1", tag="batch")
    with stack.workers_paused() as resume:  # nothing runs while the creates queue up
        good = [stack.create(subdomain=f"e2e-batch-{i}", image=image)["id"] for i in range(3)]
        bad = stack.create(subdomain="e2e-batch-bad", image=MISSING)["id"]
        resume()
        for ident in good:
            assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
        assert stack.wait_for(bad, {"running", "failed"})["status"] == "failed"

    # One playbook run brought all four, each finished on its own.
    assert _runs(stack, [*good, bad]) == [{*good, bad}]
    for i in range(3):
        assert "version v1" in stack.https(f"e2e-batch-{i}").stdout
    assert stack.containers("e2e-batch-bad") == []

    # Each deployment's deploy log links the host's run; its job view is its own part of it:
    # its own state, error and failed task, the run's events.
    jobs = {}
    for ident in [*good, bad]:
        deploy = stack.logs(ident)[1]
        assert deploy["action"] == "deploy" and deploy["status"] == ("failed" if ident == bad else "completed")
        jobs[ident] = stack.call("GET", f"/api/deploy/apps/{ident}/jobs/{deploy['job_id']}").json()["job"]
    assert len({job["id"] for job in jobs.values()}) == 1
    assert {job["deployment_id"] for job in jobs.values()} == {*good, bad}
    failed = jobs[bad]
    assert failed["state"] == "failed" and "does-not-exist" in failed["last_error"]
    assert failed["failed_task"] == "Run the app containers"
    for ident in good:
        job = jobs[ident]
        assert job["state"] == "succeeded" and job["failed_task"] is None
        assert not [e for e in job["events"] if e["status"] in {"failed", "ignored", "unreachable"}], job["events"]
        # The same run: the same tasks as the failed job's view, in the same order.
        started = [e["task"] for e in job["events"] if e["event"] == "playbook_on_task_start"]
        assert started == [e["task"] for e in failed["events"] if e["event"] == "playbook_on_task_start"]
        assert job["events"][-1]["event"] == "playbook_on_stats"
        # Nothing of the bad tenant in a good one's view or audit trail: not its id, not its image,
        # not its error (the run was shared; what failed is the bad one's own outcome).
        seen = json.dumps(job) + json.dumps(stack.logs(ident))
        assert bad not in seen and "does-not-exist" not in seen, seen
    assert not any(ident in json.dumps(failed) + json.dumps(stack.logs(bad)) for ident in good)
    for ident in good:
        stack.destroy(ident)
