"""A host run: one playbook run converges the deployments of a host that are behind, each with its
own outcome (its target), audit entry and job view.

The worker runs for real (claim, start, lease, events, finish, metrics); only the
playbook run is made up (tasks.base.run_playbook), as the converge role would report it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from buddo_deploy import cli, jobqueue, worker
from buddo_deploy.models import AuditEntry, Deployment, Job, JobEvent, JobTarget, utcnow
from buddo_deploy.results import EventSummary, PlaybookResult
from buddo_deploy.services import engine
from buddo_deploy.services.engine import SHARED_FAILURE
from buddo_deploy.tasks import ReconcileTask
from buddo_deploy.tasks import base as tasks_base

from tests.helpers import auth, create_deployment

TASK = "Run the app containers"
SITE_TASK = "Render the Caddy sites"


def _failure(task: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": "app", "task": task, "message": message}


def _outcome(item: dict[str, Any], ok: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"ok": ok, "state": item["state"], "drift": [], "generation": item["generation"], **extra}
    if ok:
        body["container"] = {"id": f"c-{item['subdomain']}", "name": item["container_name"],
                             "host_port": item["host_ports"][0], "image_digest": "sha256:abc"}
    return body


class FakeRuns:
    """Stands for run_playbook: records each run's document, reports what ``report`` makes of it.

    Its events: a task start, an ``ignored`` event per task some deployment failed at
    (its message naming them, as a module's would), the recap.
    """

    def __init__(self, report: Any) -> None:
        self.report = report
        self.runs: list[dict[str, Any]] = []

    def __call__(self, playbook: Any, inventory: Any, extravars: dict[str, Any], *, secrets: Any = None,
                 on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        items = extravars["converge_deployments"]
        self.runs.append({"playbook": playbook.name, "subdomains": [i["subdomain"] for i in items],
                          "known": list(extravars.get("converge_known") or []),
                          "secrets": dict(secrets or {}), "timeout_s": kwargs["timeout_s"]})
        result: PlaybookResult = self.report(items)
        outcomes = result.stats.get("buddo_outcomes", {})
        failed: dict[str, list[str]] = {}
        for i in items:
            if not outcomes.get(i["id"], {}).get("ok", True):
                failed.setdefault(outcomes[i["id"]]["task"], []).append(i["subdomain"])
        on_event(EventSummary("playbook_on_task_start", None, TASK, None, None))
        for task, subdomains in failed.items():
            on_event(EventSummary("runner_on_failed", "container-host-1", task, "ignored",
                                  f"failed: {', '.join(subdomains)}"))
        on_event(EventSummary("playbook_on_stats", None, None, None, '{"ok": 1}'))
        return result


@pytest.fixture
def host(client, settings):
    """Four deployments queued on container-host-1; 'd' converged already (nothing to run for it)."""
    ids = {sub: create_deployment(client, f"op-{sub}", subdomain=sub, tier="btc-pro",
                                  env_vars={"TOKEN": f"secret-{sub}"}) for sub in "abcd"}
    Deployment.update(observed_generation=1, serving_port=20000).where(Deployment.id == ids["d"]).execute()
    return ids


def _target(ident: str) -> JobTarget:
    """The deployment's part of its latest host converge."""
    found: JobTarget = JobTarget.select().where(JobTarget.deployment == ident).order_by(JobTarget.job.desc()).get()
    return found


def _job(ident: str) -> Job:
    found: Job = Job.get_by_id(_target(ident).job_id)
    return found


def _view(client: Any, ident: str, owner: str) -> dict[str, Any]:
    shown = client.simulate_get(f"/api/deploy/apps/{ident}/jobs/{_job(ident).id}", headers=auth(owner))
    assert shown.status_code == 200, shown.text
    job: dict[str, Any] = shown.json["job"]
    return job


def _succeed(items: list[dict[str, Any]]) -> PlaybookResult:
    return PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {i["id"]: _outcome(i) for i in items}})


def test_one_run_converges_the_host_and_an_app_failure_fails_its_deployment_only(client, settings, host,
                                                                                 monkeypatch):
    failures = {"b": _failure(TASK, "image x could not be pulled"), "c": _failure(SITE_TASK, "bad site")}
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i, **failures.get(i["subdomain"], {})) for i in items}}))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()

    [run] = runs.runs
    assert run["playbook"] == "converge.yml" and run["subdomains"] == ["a", "b", "c"]
    assert run["secrets"] == {host[s]: {"TOKEN": f"secret-{s}"} for s in "abc"}
    assert [Deployment.get_by_id(host[s]).status for s in "abcd"] == ["running", "failed", "failed", "pending"]
    assert [_target(host[s]).state for s in "abcd"] == ["succeeded", "failed", "failed", "succeeded"]
    assert len({_job(host[s]).id for s in "abcd"}) == 1 and _job(host["a"]).state == "failed"
    assert "could not be pulled" in _target(host["b"]).last_error and _target(host["c"]).last_error == "bad site"
    # The run's events are recorded once; a failure's text (it names b and c) is withheld.
    events = [(e.event, e.status, e.message) for e in JobEvent.select().order_by(JobEvent.id)]
    assert [e[:2] for e in events] == [("playbook_on_task_start", None), ("runner_on_failed", "ignored"),
                                       ("runner_on_failed", "ignored"), ("playbook_on_stats", None)]
    assert {e[2] for e in events if e[1] == "ignored"} == {SHARED_FAILURE}
    # The deploy log links each deployment's part of the run; its job view is its own.
    for sub, task, error in (("a", None, None), ("b", TASK, "image x could not be pulled"),
                             ("c", SITE_TASK, "bad site")):
        [entry] = AuditEntry.select().where((AuditEntry.deployment == host[sub]) & (AuditEntry.action == "deploy"))
        assert entry.job_id == _job(host[sub]).id
        assert entry.status == ("completed" if task is None else "failed")
        view = _view(client, host[sub], f"op-{sub}")
        assert (view["deployment_id"], view["failed_task"], view["state"]) == (
            host[sub], task, "succeeded" if task is None else "failed")
        assert view["last_error"] == error and len(view["events"]) == 4
        if task is not None:
            assert json.loads(entry.details)["task"] == task
    # Another operator cannot read it through a deployment of theirs that the run did not cover.
    other = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")
    assert client.simulate_get(f"/api/deploy/apps/{other}/jobs/{_job(host['a']).id}",
                               headers=auth("op-x")).status_code == 404


def test_a_run_that_failed_retries_the_host_converge(client, settings, host, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="failed", rc=4, failed_task="Observe the containers",
                                                 message="host unreachable", failed_status="unreachable"))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert len(runs.runs) == 1
    job = _job(host["a"])
    assert (job.state, job.last_error, job.lease_owner) == ("queued", "host unreachable", None)
    assert job.run_after > job.updated_at  # its backoff
    for sub in "abc":
        assert (_target(host[sub]).state, _target(host[sub]).last_error) == ("queued", "host unreachable")
        assert Deployment.get_by_id(host[sub]).status == "deploying"
        assert _view(client, host[sub], f"op-{sub}")["run_after"] is not None


def test_nothing_of_one_tenant_reaches_another_in_a_shared_run(client, settings, host, monkeypatch):
    """b's container cannot be removed: the run fails with a message naming b. a and c share the
    run: they are retried, and neither their job views nor their audit entries say anything of b."""
    leak = f"1 of 3 deployment(s) failed: {host['b']}: podman rm failed: secret-b is busy"

    def report(items: list[dict[str, Any]]) -> PlaybookResult:
        outcomes = {i["id"]: _outcome(i) for i in items}
        outcomes[host["b"]] = {"ok": False, "kind": "host", "task": "Remove", "message": "podman rm failed: busy",
                               "state": "running", "drift": [], "generation": 1}
        return PlaybookResult(status="failed", rc=2, failed_task="Remove", message=leak, failed_status="failed",
                              stats={"buddo_outcomes": outcomes})

    runs = FakeRuns(report)

    def run(*args: Any, on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        on_event(EventSummary("runner_on_failed", "container-host-1", "Remove", "failed", leak))
        return runs(*args, on_event=on_event, **kwargs)

    monkeypatch.setattr(tasks_base, "run_playbook", run)
    assert worker.Worker(settings, name="w").run_once()
    b_id = host["b"]
    assert b_id not in (_job(b_id).last_error or "")
    for sub in "ac":
        view = _view(client, host[sub], f"op-{sub}")
        assert view["state"] == "queued" and view["last_error"] == SHARED_FAILURE
        texts = [e["message"] or "" for e in view["events"]]
        assert texts and not any(b_id in t or "secret-b" in t for t in texts), texts
        details = [e.details or "" for e in AuditEntry.select().where(AuditEntry.deployment == host[sub])]
        assert not any(b_id in d or "secret-b" in d for d in details), details
    # b's own target and audit entry have its own failure.
    assert _view(client, b_id, "op-b")["last_error"] == "podman rm failed: busy"
    [entry] = AuditEntry.select().where((AuditEntry.deployment == b_id) & (AuditEntry.action == "deploy"))
    assert json.loads(entry.details)["last_error"] == "podman rm failed: busy"


def test_a_retried_run_skips_what_converged_meanwhile(client, settings, host, monkeypatch):
    failures = FakeRuns(lambda items: PlaybookResult(status="failed", rc=2, failed_task="Render the Caddy sites",
                                                     message="caddy reload failed", failed_status="failed"))
    monkeypatch.setattr(tasks_base, "run_playbook", failures)
    assert worker.Worker(settings, name="w").run_once()
    assert [r["subdomains"] for r in failures.runs] == [["a", "b", "c"]]
    assert len({_job(host[s]).id for s in "abc"}) == 1 and not _job(host["a"]).solo  # retried together
    # 'a' converged meanwhile (a reconcile, say).
    Deployment.update(observed_generation=1, serving_port=20002).where(Deployment.id == host["a"]).execute()
    Job.update(run_after=Job.updated_at).where(Job.state == "queued").execute()  # the backoff is over
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["b", "c"]]
    assert [_target(host[s]).state for s in "abc"] == ["succeeded"] * 3 and _job(host["a"]).state == "succeeded"
    assert [Deployment.get_by_id(host[s]).status for s in "bc"] == ["running"] * 2


def test_a_lost_lease_cancels_the_run_and_records_nothing(client, settings, host, monkeypatch):
    def stolen(playbook: Any, inventory: Any, extravars: dict[str, Any], **kwargs: Any) -> PlaybookResult:
        Job.update(lease_owner="thief").where(Job.action == "converge").execute()  # taken over
        deadline = time.monotonic() + 30
        while not kwargs["should_cancel"]():
            assert time.monotonic() < deadline, "the run was never canceled"
            time.sleep(0.05)
        return PlaybookResult(status="canceled", rc=None, message="canceled: the job's lease was lost")

    monkeypatch.setattr(tasks_base, "run_playbook", stolen)
    assert worker.Worker(dataclasses.replace(settings, job_lease_s=1), name="w").run_once()
    job = _job(host["a"])
    assert (job.state, job.lease_owner) == ("running", "thief")
    assert [_target(host[s]).state for s in "abc"] == ["running"] * 3
    assert [Deployment.get_by_id(host[s]).status for s in "abc"] == ["deploying"] * 3


def test_a_deployment_missing_from_the_outcomes_is_retried_alone(client, settings, host, monkeypatch):
    runs = FakeRuns(lambda items: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        i["id"]: _outcome(i) for i in items if i["subdomain"] != "c"}}))
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert [_target(host[s]).state for s in "abc"] == ["succeeded", "succeeded", "queued"]
    assert _job(host["c"]).state == "queued"
    Job.update(run_after=Job.updated_at).where(Job.state == "queued").execute()
    again = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", again)
    assert worker.Worker(settings, name="w").run_once()
    assert [r["subdomains"] for r in again.runs] == [["c"]] and _target(host["c"]).state == "succeeded"


def test_many_changes_cost_one_run(client, settings, host, monkeypatch):
    """Ten restarts queued while nothing runs: one converge of the host, one playbook run."""
    for _ in range(10):
        client.simulate_post(f"/api/deploy/apps/{host['a']}/restart", headers=auth("op-a"))
    assert Job.select().where(Job.action == "converge").count() == 1
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert len(runs.runs) == 1 and jobqueue.open_converge(Deployment.get_by_id(host["a"])) is None
    d = Deployment.get_by_id(host["a"])
    assert d.generation == 11 and d.observed_generation == 11 and d.status == "running"


def test_a_converge_waits_for_a_burst_of_changes_to_settle_but_never_longer_than_the_cap(client, settings,
                                                                                          monkeypatch):
    """Changes that come together join one run: a queued converge waits SETTLE_S after its
    latest change (no worker claims it before), but never more than MAX_SETTLE_S after its first."""
    monkeypatch.setattr(jobqueue, "SETTLE_S", 3600.0)
    monkeypatch.setattr(jobqueue, "MAX_SETTLE_S", 5400.0)
    first = create_deployment(client, "op-a", subdomain="a", tier="btc-pro")
    job = _job(first)
    waits = [job.run_after - job.created_at]
    assert jobqueue.claim("w", 30) is None  # settling
    for sub in ("b", "c"):
        create_deployment(client, f"op-{sub}", subdomain=sub, tier="btc-pro")
        waits.append(Job.get_by_id(job.id).run_after - job.created_at)
    assert Job.select().where(Job.action == "converge").count() == 1
    assert 3599 <= waits[0].total_seconds() <= waits[1].total_seconds() <= waits[2].total_seconds() <= 5400
    monkeypatch.setattr(jobqueue, "MAX_SETTLE_S", 0.0)  # the cap reached: the next change makes it due now
    create_deployment(client, "op-d", subdomain="d", tier="btc-pro")
    claimed = jobqueue.claim("w", 30)
    assert claimed is not None and claimed.id == job.id


def _timeout(items: list[dict[str, Any]]) -> PlaybookResult:
    return PlaybookResult(status="timeout", rc=None, message="timed out after 600 s")


def _end_backoffs() -> None:
    Job.update(run_after=Job.updated_at).where(Job.state == "queued").execute()


def _entry(ident: str) -> AuditEntry:
    """The deployment's latest audit entry."""
    found: AuditEntry = AuditEntry.select().where(AuditEntry.deployment == ident).order_by(
        AuditEntry.inserted_at.desc(), AuditEntry.id.desc()).get()
    return found


def test_a_shared_run_that_timed_out_retries_each_deployment_alone(client, settings, host, monkeypatch):
    """One of a, b, c made the run hang until the job timeout (which one, nobody knows): each is
    retried in a solo converge of its own, and another tenant's create runs while one hangs again."""
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_timeout))
    assert worker.Worker(settings, name="w").run_once()
    shared = _job(host["d"])  # d converged already: it stays in the run's job
    assert (shared.state, shared.last_error) == ("failed", SHARED_FAILURE)  # the run ends there
    solos = {sub: _job(host[sub]) for sub in "abc"}
    assert len({j.id for j in solos.values()} | {shared.id}) == 4
    for sub, job in solos.items():
        assert (job.solo, job.state, job.attempts) == (True, "queued", 0) and job.run_after > job.updated_at
        [target] = jobqueue.targets(job)
        assert (str(target.deployment_id), target.generation, target.state, target.last_error) == (
            host[sub], 1, "queued", SHARED_FAILURE)
        # The deploy log's entry says retrying and names the solo converge, which shows when it runs next ...
        entry = _entry(host[sub])
        assert (entry.action, entry.status, entry.job_id) == ("deploy", "running", job.id)
        assert json.loads(entry.details)["retrying_in_s"] > 0
        view = _view(client, host[sub], f"op-{sub}")
        assert (view["id"], view["state"], view["last_error"]) == (job.id, "queued", SHARED_FAILURE)
        assert view["run_after"] is not None and view["events"] == []
        # ... and the timed-out run stays readable as the deployment's part of it.
        old = client.simulate_get(f"/api/deploy/apps/{host[sub]}/jobs/{shared.id}", headers=auth(f"op-{sub}"))
        assert old.status_code == 200 and old.json["job"]["state"] == "failed" and old.json["job"]["events"]
        assert Deployment.get_by_id(host[sub]).status == "deploying"

    # Another tenant's create queues an ordinary converge (it joins none of the solo ones).
    x = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")
    assert not _job(x).solo and _job(x).id not in {j.id for j in solos.values()}
    _end_backoffs()
    hung = jobqueue.claim("hung", 30)  # a's solo converge runs (and hangs again)
    assert hung is not None and hung.id == solos["a"].id
    hung_plan = engine.start_converge(hung, "hung", settings.secret_key)
    assert hung_plan is not None and [i["subdomain"] for i in hung_plan.items] == ["a"]
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["b"], ["c"], ["x"]]  # each alone, beside a's
    assert Job.get_by_id(hung.id).state == "running" and _job(x).state == "succeeded"
    assert [Deployment.get_by_id(i).status for i in (host["b"], host["c"], x)] == ["running"] * 3
    # a's run times out again: it is alone, so it just retries (the same job, with a backoff).
    assert engine.finish(hung_plan, "hung", _timeout(hung_plan.items), 600.0) == "retried"
    again = Job.get_by_id(hung.id)
    assert (again.state, again.solo, again.last_error) == ("queued", True, "timed out after 600 s")
    assert _job(host["a"]).id == hung.id and _entry(host["a"]).job_id == hung.id


def test_a_suspects_own_changes_stay_alone_behind_its_solo_converge(client, settings, host, monkeypatch):
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_timeout))
    assert worker.Worker(settings, name="w").run_once()
    solo = _job(host["a"])
    # A restart of a while its solo converge waits joins it (a change is worth trying now).
    assert client.simulate_post(f"/api/deploy/apps/{host['a']}/restart", headers=auth("op-a")).status_code == 200
    assert _job(host["a"]).id == solo.id and _target(host["a"]).generation == 2
    assert [str(t.deployment_id) for t in jobqueue.targets(solo)] == [host["a"]]
    assert _entry(host["a"]).job_id == solo.id
    # While it runs, the next restart queues a's next solo converge, behind it.
    Job.update(run_after=Job.updated_at).where(Job.id == solo.id).execute()
    assert jobqueue.claim("hung", 30).id == solo.id
    assert client.simulate_post(f"/api/deploy/apps/{host['a']}/restart", headers=auth("op-a")).status_code == 200
    x = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")
    nxt = _job(host["a"])
    assert nxt.id not in {solo.id, _job(x).id} and nxt.solo and not _job(x).solo
    assert [str(t.deployment_id) for t in jobqueue.targets(nxt)] == [host["a"]] and _target(host["a"]).generation == 3
    _end_backoffs()
    claimed = [jobqueue.claim("w", 30) for _ in range(4)]
    assert {j.id for j in claimed if j} == {_job(host["b"]).id, _job(host["c"]).id, _job(x).id}  # not a's next
    assert claimed[-1] is None


def test_a_run_of_one_deployment_that_timed_out_retries_alone_in_its_job(client, settings, monkeypatch):
    a = create_deployment(client, "op-a", subdomain="a", tier="btc-pro")
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_timeout))
    assert worker.Worker(settings, name="w").run_once()
    job = _job(a)
    assert (job.state, job.solo, job.last_error) == ("queued", True, "timed out after 600 s")
    assert Job.select().where(Job.action == "converge").count() == 1  # no new job
    assert _target(a).state == "queued" and _entry(a).job_id == job.id
    # Another deployment's create does not join it: its converge runs while a's waits.
    b = create_deployment(client, "op-b", subdomain="b", tier="btc-pro")
    assert _job(b).id != job.id and not _job(b).solo
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert [r["subdomains"] for r in runs.runs] == [["b"]] and Job.get_by_id(job.id).state == "queued"


def _host_failure(sub: str, message: str) -> Any:
    """A run in which ``sub``'s step failed on the host (its outcome: kind host, retried), the others converged."""
    def report(items: list[dict[str, Any]]) -> PlaybookResult:
        outcomes = {i["id"]: _outcome(i) for i in items}
        for i in items:
            if i["subdomain"] == sub:
                outcomes[i["id"]] = {"ok": False, "kind": "host", "task": "Remove", "message": message,
                                     "state": i["state"], "drift": [], "generation": i["generation"]}
        return PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": outcomes})
    return report


def test_a_change_that_joins_a_retried_run_where_its_deployment_converged_runs_again(client, settings, host,
                                                                                      monkeypatch):
    """a's step failed on the host (retried), b and c converged: a restart of b joins that queued
    job, and opens b's target again (it used to raise its generation only: the change never ran)."""
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_host_failure("a", "podman rm failed: busy")))
    assert worker.Worker(settings, name="w").run_once()
    job = _job(host["a"])
    assert job.state == "queued" and [_target(host[s]).state for s in "abc"] == ["queued", "succeeded", "succeeded"]
    assert client.simulate_post(f"/api/deploy/apps/{host['b']}/restart", headers=auth("op-b")).status_code == 200
    assert _job(host["b"]).id == job.id  # it joined the queued job
    target = _target(host["b"])
    assert (target.state, target.generation, target.last_error, target.failed_task) == ("queued", 2, None, None)
    assert jobqueue.open_converge(Deployment.get_by_id(host["b"])).id == job.id
    view = _view(client, host["b"], "op-b")
    assert (view["state"], view["generation"], view["last_error"]) == ("queued", 2, None)
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["a", "b"]]
    b = Deployment.get_by_id(host["b"])
    assert (b.generation, b.observed_generation, b.status) == (2, 2, "running")
    assert jobqueue.open_converge(b) is None and _target(host["b"]).state == "succeeded"
    restart = _entry(host["b"])
    assert (restart.action, restart.status, restart.job_id) == ("restart", "completed", job.id)


def test_a_retry_that_runs_one_deployment_of_a_shared_job_tells_the_others_nothing_of_it(client, settings, host,
                                                                                         monkeypatch):
    """a's step failed on the host in the run of a, b and c; b and c converged. The retry runs a alone
    and fails with a message naming a and its podman error: the job is still b's and c's, so their
    job views (its events) and audit entries show nothing of it."""
    a_id = host["a"]
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_host_failure("a", "podman rm failed: busy")))
    assert worker.Worker(settings, name="w").run_once()
    job = _job(a_id)
    leak = f"1 of 1 deployment(s) failed: {a_id}: podman rm failed: container secret-a is in use"

    def report(items: list[dict[str, Any]]) -> PlaybookResult:
        assert [i["subdomain"] for i in items] == ["a"]
        outcome = {"ok": False, "kind": "host", "task": "Remove", "message": f"podman rm {a_id}: in use",
                   "state": "running", "drift": [], "generation": 1}
        return PlaybookResult(status="failed", rc=2, failed_task="Remove", message=leak, failed_status="failed",
                              stats={"buddo_outcomes": {a_id: outcome}})

    runs = FakeRuns(report)

    def run(*args: Any, on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        on_event(EventSummary("runner_on_failed", "container-host-1", "Remove", "failed", leak))
        return runs(*args, on_event=on_event, **kwargs)

    monkeypatch.setattr(tasks_base, "run_playbook", run)
    _end_backoffs()
    assert worker.Worker(settings, name="w").run_once()
    assert len(runs.runs) == 1 and _job(a_id).id == job.id and Job.get_by_id(job.id).attempts == 2
    stored = Job.get_by_id(job.id)
    assert stored.state == "queued" and stored.last_error == SHARED_FAILURE
    for text in [e.message or "" for e in JobEvent.select().where(JobEvent.job == job.id)]:
        assert a_id not in text and "podman" not in text, text
    for sub in "bc":
        view = _view(client, host[sub], f"op-{sub}")
        assert view["id"] == job.id and view["state"] == "succeeded" and view["last_error"] is None
        shown = json.dumps(view)
        assert view["events"] and a_id not in shown and "podman" not in shown and "secret-a" not in shown
        details = [e.details or "" for e in AuditEntry.select().where(AuditEntry.deployment == host[sub])]
        assert not any(a_id in d or "podman" in d for d in details), details
    # a's own target and audit entry have its own failure.
    assert _view(client, a_id, "op-a")["last_error"] == f"podman rm {a_id}: in use"
    assert json.loads(_entry(a_id).details)["last_error"] == f"podman rm {a_id}: in use"


def test_a_job_that_gets_a_second_target_withholds_what_its_runs_recorded_for_the_first(client, settings,
                                                                                        monkeypatch):
    """a's run (a alone: nothing withheld) failed on the host and waits to be retried; b's create
    joins that job: from then on b reads its events, which tell nothing of a's failure."""
    a = create_deployment(client, "op-a", subdomain="a", tier="btc-pro")
    runs = FakeRuns(_host_failure("a", f"podman rm {a}: in use"))

    def run(*args: Any, on_event: Any = None, **kwargs: Any) -> PlaybookResult:
        on_event(EventSummary("runner_on_failed", "container-host-1", "Remove", "ignored", f"{a}: podman rm: in use"))
        return runs(*args, on_event=on_event, **kwargs)

    monkeypatch.setattr(tasks_base, "run_playbook", run)
    assert worker.Worker(settings, name="w").run_once()
    job = _job(a)
    assert any(a in (e.message or "") for e in JobEvent.select())  # its own run: its own text, unfiltered
    b = create_deployment(client, "op-b", subdomain="b", tier="btc-pro")
    assert _job(b).id == job.id
    view = _view(client, b, "op-b")
    assert view["events"] and a not in json.dumps(view)
    assert {e.message for e in JobEvent.select() if e.status == "ignored"} == {SHARED_FAILURE}
    assert _view(client, a, "op-a")["last_error"] == f"podman rm {a}: in use"  # its own target keeps it


def test_a_retry_of_one_deployment_of_a_shared_job_that_timed_out_goes_on_in_a_solo_converge(client, settings,
                                                                                             host, monkeypatch):
    """The retry that runs a alone (b and c converged in the job's first run) times out: the job is
    still b's and c's, so a goes on in a solo converge of one target, whose runs are a's alone."""
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_host_failure("a", "podman rm failed: busy")))
    assert worker.Worker(settings, name="w").run_once()
    job = _job(host["a"])
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_timeout))
    _end_backoffs()
    assert worker.Worker(settings, name="w").run_once()
    assert Job.get_by_id(job.id).state == "failed" and [_target(host[s]).job_id for s in "bc"] == [job.id] * 2
    solo = _job(host["a"])
    assert solo.id != job.id and solo.solo and [str(t.deployment_id) for t in jobqueue.targets(solo)] == [host["a"]]
    assert _entry(host["a"]).job_id == solo.id
    # b's next change joins no job that waits for a: it runs while a's solo converge waits.
    assert client.simulate_post(f"/api/deploy/apps/{host['b']}/restart", headers=auth("op-b")).status_code == 200
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    assert worker.Worker(settings, name="w").run_once()
    assert [r["subdomains"] for r in runs.runs] == [["b"]] and Deployment.get_by_id(host["b"]).status == "running"
    # The solo converge's runs are a's alone: nothing withheld from a.
    leak = f"{host['a']}: podman rm failed"
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(
        lambda items: PlaybookResult(status="failed", rc=2, message=leak, failed_status="failed")))
    _end_backoffs()
    assert worker.Worker(settings, name="w").run_once()
    assert _view(client, host["a"], "op-a")["last_error"] == leak


def test_a_reconcile_leaves_a_suspect_alone_and_does_not_wait_for_its_solo_converge(client, settings, host,
                                                                                   monkeypatch, capsys):
    """a, b and c timed out together; b and c then converged alone, a's solo converge waits out its
    backoff. The worker's periodic reconcile runs at once, without a (known: not an orphan either);
    what is queued after it waits for it as before, and a's solo converge runs after it."""
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_timeout))
    assert worker.Worker(settings, name="w").run_once()
    solo = _job(host["a"])
    Job.update(run_after=Job.updated_at).where((Job.state == "queued") & (Job.id != solo.id)).execute()
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["b"], ["c"]]
    assert Job.get_by_id(solo.id).state == "queued" and Job.get_by_id(solo.id).run_after > utcnow()  # its backoff

    worker.queue_reconciles(settings)
    [reconcile] = Job.select().where(Job.action == "reconcile")
    x = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")  # queued after the reconcile
    claimed = jobqueue.claim("w", 30)
    assert claimed is not None and claimed.id == reconcile.id  # not behind a's solo converge
    assert jobqueue.claim("w2", 30) is None  # x's converge waits for it, as before
    report = ReconcileTask(settings, "w").run(claimed)
    [run] = runs.runs[2:]
    assert run["playbook"] == "reconcile.yml" and sorted(run["subdomains"]) == ["b", "c", "d", "x"]
    assert run["known"] == [host["a"]]  # neither converged nor an orphan
    assert report.suspects == [host["a"]] and report.as_dict()["suspects"] == [host["a"]]
    assert not report.converged and report.unchecked == [] and len(report.deployments) == 4
    cli._print_report([report], False, False)  # what `buddo-deploy reconcile` prints
    assert f"(suspects): {host['a']}" in capsys.readouterr().out
    assert Job.get_by_id(reconcile.id).state == "failed"  # the host is not converged: a is not
    a = Deployment.get_by_id(host["a"])
    assert (a.status, a.observed_generation) == ("deploying", 0) and _entry(host["a"]).job_id == solo.id
    assert _target(host["a"]).state == "queued" and _target(host["a"]).job_id == solo.id

    # What was queued after the reconcile runs now; a's solo converge once its backoff ends.
    after = jobqueue.claim("w2", 30)
    assert after is not None and after.id == _job(x).id
    assert jobqueue.claim("w3", 30) is None
    _end_backoffs()
    again = jobqueue.claim("w3", 30)
    assert again is not None and again.id == solo.id


def _restart_entry(ident: str) -> AuditEntry:
    found: AuditEntry = AuditEntry.get((AuditEntry.deployment == ident) & (AuditEntry.action == "restart"))
    return found


def test_a_change_queued_while_a_lone_run_hangs_goes_on_in_its_solo_converge(client, settings, monkeypatch):
    """a's run (a alone) hangs; a's restart and x's create, queued meanwhile, share the host's ordinary
    converge. The run times out and retries as a's solo converge, which takes a's restart: x's create
    runs while a's solo converge waits out its backoff (it used to wait for it, and a retries for as
    long as it hangs)."""
    a = create_deployment(client, "op-a", subdomain="a", tier="btc-pro")
    hung = jobqueue.claim("hung", 30)
    assert hung is not None
    plan = engine.start_converge(hung, "hung", settings.secret_key)
    assert plan is not None and [i["subdomain"] for i in plan.items] == ["a"]
    assert client.simulate_post(f"/api/deploy/apps/{a}/restart", headers=auth("op-a")).status_code == 200
    x = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")
    ordinary = _job(x)
    assert _restart_entry(a).job_id == ordinary.id and {str(t.deployment_id) for t in jobqueue.targets(ordinary)} == {
        a, x}
    assert engine.finish(plan, "hung", _timeout(plan.items), 600.0) == "retried"
    solo = Job.get_by_id(hung.id)
    assert (solo.solo, solo.state, _job(a).id) == (True, "queued", hung.id)
    assert (_target(a).generation, _target(a).state, _target(a).last_error) == (2, "queued", "timed out after 600 s")
    assert _restart_entry(a).job_id == solo.id and _view(client, a, "op-a")["id"] == solo.id
    assert [str(t.deployment_id) for t in jobqueue.targets(ordinary)] == [x]
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["x"]] and Deployment.get_by_id(x).status == "running"
    _end_backoffs()
    assert worker.Worker(settings, name="w").run_once()
    assert [r["subdomains"] for r in runs.runs] == [["x"], ["a"]]
    got = Deployment.get_by_id(a)
    assert (got.status, got.observed_generation) == ("running", 2)
    assert (_restart_entry(a).status, _restart_entry(a).job_id) == ("completed", solo.id)


def test_a_change_queued_while_a_shared_run_hangs_goes_on_in_the_suspects_solo_converge(client, settings, host,
                                                                                        monkeypatch):
    """a, b and c run together and hang; a's restart and x's create, queued meanwhile, share the host's
    ordinary converge. The run times out: a's restart goes on in a's solo converge, so x's create runs
    alone while the suspects wait out their backoff (it used to run a again beside x, before a's solo
    converge: x would hang with it)."""
    hung = jobqueue.claim("hung", 30)
    assert hung is not None
    plan = engine.start_converge(hung, "hung", settings.secret_key)
    assert plan is not None and [i["subdomain"] for i in plan.items] == ["a", "b", "c"]
    assert client.simulate_post(f"/api/deploy/apps/{host['a']}/restart", headers=auth("op-a")).status_code == 200
    x = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")
    ordinary = _job(x)
    assert _job(host["a"]).id == ordinary.id and _restart_entry(host["a"]).job_id == ordinary.id
    assert engine.finish(plan, "hung", _timeout(plan.items), 600.0) == "retried"
    solo = _job(host["a"])
    assert solo.solo and solo.id > ordinary.id and [str(t.deployment_id) for t in jobqueue.targets(solo)] == [
        host["a"]]
    assert (_target(host["a"]).generation, _target(host["a"]).state) == (2, "queued")
    entries = AuditEntry.select().where((AuditEntry.deployment == host["a"]) & AuditEntry.job_id.is_null(False))
    assert {(e.action, e.status, e.job_id) for e in entries} == {("deploy", "running", solo.id),
                                                                ("restart", "pending", solo.id)}
    assert [str(t.deployment_id) for t in jobqueue.targets(ordinary)] == [x]
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["x"]]  # alone, while the suspects wait
    _end_backoffs()
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["x"], ["a"], ["b"], ["c"]]  # each alone
    got = Deployment.get_by_id(host["a"])
    assert (got.status, got.observed_generation) == ("running", 2)
    assert _restart_entry(host["a"]).status == "completed"


def test_a_reconcile_queued_before_a_suspects_solo_converge_starts_holds_no_converge_while_it_hangs(
        client, settings, host, monkeypatch):
    """a, b and c timed out together. The periodic reconcile is queued while their solo converges
    wait out their backoff; then a's runs (the reconcile waits for that run) and hangs again. x's
    create, queued after the reconcile, runs beside it (it used to wait for the reconcile, which waits
    for a's run until its timeout). Once a's run ended, the reconcile runs, and what is queued after
    it waits for it again."""
    monkeypatch.setattr(tasks_base, "run_playbook", FakeRuns(_timeout))
    assert worker.Worker(settings, name="w").run_once()
    worker.queue_reconciles(settings)
    [reconcile] = Job.select().where(Job.action == "reconcile")
    solo = _job(host["a"])
    Job.update(run_after=Job.updated_at).where(Job.id == solo.id).execute()
    hung = jobqueue.claim("hung", 30)
    assert hung is not None and hung.id == solo.id
    plan = engine.start_converge(hung, "hung", settings.secret_key)
    assert plan is not None
    x = create_deployment(client, "op-x", subdomain="x", tier="btc-pro")
    runs = FakeRuns(_succeed)
    monkeypatch.setattr(tasks_base, "run_playbook", runs)
    while worker.Worker(settings, name="w").run_once():
        pass
    assert [r["subdomains"] for r in runs.runs] == [["x"]] and Deployment.get_by_id(x).status == "running"
    assert Job.get_by_id(reconcile.id).state == "queued"  # never beside a's run
    assert engine.finish(plan, "hung", _timeout(plan.items), 600.0) == "retried"
    y = create_deployment(client, "op-y", subdomain="y", tier="btc-pro")
    claimed = jobqueue.claim("w", 30)
    assert claimed is not None and claimed.id == reconcile.id
    assert jobqueue.claim("w2", 30) is None and _job(y).state == "queued"  # y's waits for it again


def test_what_a_run_reports_is_recorded_before_the_run_ends_and_stays_when_it_then_times_out(
        client, settings, host, monkeypatch):
    """The converge reports each outcome (set_stats) before ansible-playbook ends: a deployment is
    running from then on. A run that then fails (here: times out) keeps what it reported final, and
    retries only the deployment whose outcome was a failure on the host."""
    seen: dict[str, str] = {}

    def run(playbook: Any, inventory: Any, extravars: dict[str, Any], *, on_report: Any = None,
            **kwargs: Any) -> PlaybookResult:
        items = extravars["converge_deployments"]
        outcomes = {i["id"]: _outcome(i) for i in items if i["subdomain"] != "c"}
        outcomes[host["b"]] = _outcome(next(i for i in items if i["subdomain"] == "b"),
                                       **_failure(TASK, "the app never answered"))
        outcomes[host["c"]] = _outcome(next(i for i in items if i["subdomain"] == "c"), ok=False, kind="host",
                                       task=TASK, message="podman failed")
        on_report({"buddo_outcomes": outcomes, "buddo_orphans": []})
        seen.update({s: Deployment.get_by_id(host[s]).status for s in "abc"})
        return PlaybookResult(status="timeout", rc=None, message="timed out after 600 s")

    monkeypatch.setattr(tasks_base, "run_playbook", run)
    assert worker.Worker(settings, name="w").run_once()
    assert seen == {"a": "running", "b": "failed", "c": "deploying"}
    assert [Deployment.get_by_id(host[s]).status for s in "abc"] == ["running", "failed", "deploying"]
    assert [_target(host[s]).state for s in "abc"] == ["succeeded", "failed", "queued"]
    [entry] = AuditEntry.select().where((AuditEntry.deployment == host["a"]) & (AuditEntry.action == "deploy"))
    assert entry.status == "completed"
