"""Health verdicts, self-healing with its crash-loop guard, reconcile reports: services/engine.py without Ansible."""

from __future__ import annotations

import datetime as dt
import json
import threading

from buddo_deploy import jobqueue
from buddo_deploy.models import AuditEntry, Deployment, Job, database_proxy, utcnow
from buddo_deploy.results import PlaybookResult
from buddo_deploy.services import engine, state
from buddo_deploy.worker import queue_reconciles

from tests.helpers import auth, count_statements, create_deployment, run_job

POLICY = engine.HealthPolicy(failures_before_restart=3, max_restarts=3)


def running(client, settings, **body):
    ident = create_deployment(client, **body)
    run_job(settings)
    return Deployment.get_by_id(ident)


def report(d, *, state_="running", healthy=True, status=200, present=True):
    containers = [{"id": "c1", "deployment_id": str(d.id), "spec": state.spec_of(d), "state": state_,
                   "host_port": d.serving_port}] if present else []
    probes = {"c1": {"status": status, "healthy": healthy, "error": "" if healthy else "connection refused"}}
    return {"containers": containers, "probes": probes if present and state_ == "running" else {}}


def restarts(ident):
    return [json.loads(e.details) for e in AuditEntry.select().where(
        (AuditEntry.deployment == ident) & (AuditEntry.action == "restart")).order_by(AuditEntry.inserted_at)]


def test_a_healthy_probe_records_health(client, settings):
    d = running(client, settings)
    Deployment.update(health_status="unhealthy", health_failures=2).where(Deployment.id == d.id).execute()
    assert engine.record_health(d.host, report(d), POLICY) == {str(d.id): "healthy"}
    d = Deployment.get_by_id(d.id)
    assert (d.health_status, d.health_failures) == ("healthy", 0)


def test_three_failed_probes_replace_the_container(client, settings):
    d = running(client, settings)
    for _ in range(2):
        assert engine.record_health(d.host, report(d, healthy=False, status=-1), POLICY)[str(d.id)] == "unhealthy"
    assert jobqueue.claim("w", 30) is None
    assert engine.record_health(d.host, report(d, healthy=False, status=-1), POLICY)[str(d.id)] == "restarted"
    after = Deployment.get_by_id(d.id)
    assert after.revision == d.revision + 1 and after.pull_revision != after.revision  # the same image again
    [heal] = restarts(d.id)
    assert heal["reason"] == "health" and "3 failed probes" in heal["message"]
    entry = AuditEntry.get((AuditEntry.deployment == d.id) & (AuditEntry.action == "restart"))
    assert entry.initiated_by is None and entry.status == "pending"
    job = jobqueue.claim("w", 30)
    assert job is not None
    assert [str(t.deployment_id) for t in jobqueue.targets(job)] == [str(d.id)]


def test_an_exited_or_missing_container_is_converged_at_once(client, settings):
    d = running(client, settings)
    assert engine.record_health(d.host, report(d, state_="exited"), POLICY)[str(d.id)] == "restarted"
    assert Deployment.get_by_id(d.id).revision == d.revision  # the same container is started again
    assert restarts(d.id)[0] == {"reason": "container_exited", "message": "container exited"}
    run_job(settings)
    d = Deployment.get_by_id(d.id)
    assert engine.record_health(d.host, report(d, present=False), POLICY)[str(d.id)] == "restarted"
    assert restarts(d.id)[-1]["message"] == "container missing"


def test_a_deployment_that_is_changing_is_left_to_its_own_job(client, settings):
    d = running(client, settings)
    client.simulate_post(f"/api/deploy/apps/{d.id}/stop", headers=auth())
    assert engine.record_health(d.host, report(d, present=False), POLICY) == {}


def test_restarts_pause_after_three_an_hour_and_the_audit_log_says_so(client, settings):
    d = running(client, settings)
    for _ in range(3):
        assert engine.record_health(d.host, report(d, state_="exited"), POLICY)[str(d.id)] == "restarted"
        run_job(settings)
    for _ in range(2):
        assert engine.record_health(d.host, report(d, state_="exited"), POLICY)[str(d.id)] == "paused"
    paused = [e for e in restarts(d.id) if e["reason"] == "crash_loop"]
    assert len(paused) == 1 and "automatic restarts paused" in paused[0]["message"]
    assert Deployment.get_by_id(d.id).health_status == "unhealthy"
    # An hour later the budget is back.
    AuditEntry.update(inserted_at=utcnow() - dt.timedelta(hours=2)).where(AuditEntry.deployment == d.id).execute()
    assert engine.record_health(d.host, report(d, state_="exited"), POLICY)[str(d.id)] == "restarted"


def _reconcile(settings, outcomes, ok=True, check=False):
    with database_proxy.obj.atomic():
        job = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
    claimed = jobqueue.claim("w", 30)
    assert claimed is not None
    assert claimed.id == job.id
    plan = engine.start_reconcile(claimed, settings.secret_key, check=check)
    stats = {"buddo_outcomes": outcomes(plan), "buddo_orphans": ["container ghost"]} if ok else {}
    result = PlaybookResult(status="successful" if ok else "failed", rc=0 if ok else 4,
                            message=None if ok else "host unreachable", stats=stats)
    return plan, engine.finish_reconcile(plan, "w", result, 2.0)


def test_reconcile_records_repairs_on_each_deployment_it_repaired(client, settings):
    fine = running(client, settings, subdomain="fine")
    drifted = running(client, settings, subdomain="drifted")

    def outcomes(plan):
        return {i["id"]: {"ok": True, "state": i["state"], "generation": i["generation"],
                          "drift": ["site missing"] if i["id"] == str(drifted.id) else [],
                          "container": {"id": "c", "host_port": i["host_ports"][0]}} for i in plan.items}

    plan, result = _reconcile(settings, outcomes)
    assert {i["subdomain"] for i in plan.items} == {"fine", "drifted"}
    assert result.converged and result.orphans == ["container ghost"]
    [repair] = AuditEntry.select().where((AuditEntry.deployment == drifted.id) & (AuditEntry.action == "deploy")
                                         & AuditEntry.initiated_by.is_null()).order_by(AuditEntry.inserted_at)[1:]
    assert repair.status == "completed" and json.loads(repair.details) == {"reason": "drift", "drift": ["site missing"]}
    assert AuditEntry.select().where(AuditEntry.deployment == fine.id).count() == 2  # create, deploy
    assert Job.get_by_id(plan.job.id).state == "succeeded"


def test_a_reconcile_that_finds_nothing_to_do_writes_nothing(client, settings):
    """No drift, nothing done, the container the deployment already records: not one row written
    (a host's reconcile of thousands is one read, not a transaction per deployment)."""
    d = running(client, settings)
    Deployment.update(health_status="unhealthy", health_failures=1).where(Deployment.id == d.id).execute()
    before = Deployment.get_by_id(d.id)
    entries = AuditEntry.select().count()

    def outcomes(plan):
        return {i["id"]: {"ok": True, "state": i["state"], "generation": i["generation"], "drift": [],
                          "container": {"id": before.container_id, "host_port": before.serving_port}}
                for i in plan.items}

    _, result = _reconcile(settings, outcomes)
    assert result.converged and result.deployments[0]["drift"] == []
    after = Deployment.get_by_id(d.id)
    assert after.updated_at == before.updated_at and after.health_status == "unhealthy"  # the prober's verdict
    assert AuditEntry.select().count() == entries

    # Another container serving than the one recorded: recorded.
    def moved(plan):
        return {i["id"]: {"ok": True, "state": i["state"], "generation": i["generation"], "drift": [],
                          "container": {"id": "c-other", "host_port": before.serving_port}} for i in plan.items}

    _reconcile(settings, moved)
    assert Deployment.get_by_id(d.id).container_id == "c-other"


def test_a_dry_run_records_nothing(client, settings):
    d = running(client, settings)
    before = AuditEntry.select().count()

    def outcomes(plan):
        return {i["id"]: {"ok": True, "state": i["state"], "generation": i["generation"], "drift": ["site missing"]}
                for i in plan.items}

    plan, result = _reconcile(settings, outcomes, check=True)
    assert plan.check and result.deployments[0]["drift"] == ["site missing"]
    assert AuditEntry.select().count() == before
    assert Deployment.get_by_id(d.id).updated_at == d.updated_at


def test_a_reconcile_whose_run_failed_changes_nothing_and_names_what_it_could_not_check(client, settings):
    d = running(client, settings)
    before = AuditEntry.select().count()
    _, result = _reconcile(settings, lambda plan: {}, ok=False)
    assert not result.converged and result.unchecked == [str(d.id)] and result.message == "host unreachable"
    assert AuditEntry.select().count() == before


def test_a_failed_first_deploy_is_known_to_reconcile_but_not_retried(client, settings):
    ident = create_deployment(client)
    run_job(settings, lambda plan: PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": {
        ident: {"ok": False, "kind": "app", "message": "bad image", "state": "running", "generation": 1}}}))
    items, known, _ = engine.reconcile_scope("container-host-1")
    assert items == [] and known == [ident]


def test_the_worker_queues_one_reconcile_per_host(client, settings):
    running(client, settings)
    queue_reconciles(settings)
    queue_reconciles(settings)
    assert Job.select().where((Job.action == "reconcile") & (Job.state == "queued")).count() == 1


def test_a_probe_cycle_of_healthy_deployments_costs_the_same_statements_however_many(client, settings, monkeypatch):
    """Healthy and recorded so: one statement for all of them (the time of the check), not a
    locked transaction and an update each (issue 19)."""
    def cycle_report(ds):
        containers = [{"id": f"c{i}", "deployment_id": str(d.id), "spec": state.spec_of(d), "state": "running",
                       "host_port": d.serving_port} for i, d in enumerate(ds)]
        return {"containers": containers,
                "probes": {f"c{i}": {"status": 200, "healthy": True, "error": ""} for i in range(len(ds))}}

    def statements(ds):
        cycle, verdicts = cycle_report(ds), {}
        count = count_statements(monkeypatch, lambda: verdicts.update(engine.record_health(ds[0].host, cycle, POLICY)))
        assert verdicts == {str(d.id): "healthy" for d in ds}
        return count

    ds = [running(client, settings, subdomain=f"h{i}", tier="btc-pro") for i in range(2)]
    before = Deployment.get_by_id(ds[0].id).last_health_check
    few = statements([Deployment.get_by_id(d.id) for d in ds])
    assert Deployment.get_by_id(ds[0].id).last_health_check > before
    ds += [running(client, settings, subdomain=f"h{i}", tier="btc-pro") for i in range(2, 6)]
    assert statements([Deployment.get_by_id(d.id) for d in ds]) == few == 2  # the read and the update


def test_one_worker_probes_a_host_at_a_time_and_its_hosts_at_once(client, settings, monkeypatch):
    """A host's probe is its lease holder's (taken over once it lapsed); that worker probes its
    hosts in parallel (three probes meet at a barrier), each with its own connection."""
    from buddo_deploy import worker as worker_module

    hosts = ["host-a", "host-b", "host-c"]
    monkeypatch.setattr(worker_module.engine, "hosts", lambda inventory_hosts=(): hosts)
    met = threading.Barrier(3, timeout=10)
    probed: list[tuple[str, str]] = []

    def probe(self, host):
        probed.append((self.owner, host))
        Deployment.select().count()  # the thread's own connection works
        met.wait()
        return {}

    monkeypatch.setattr(worker_module.HealthProber, "probe_host", probe)
    first, second = worker_module.HealthProber(settings, "w1"), worker_module.HealthProber(settings, "w2")
    first.probe_all()
    assert sorted(probed) == [("w1", h) for h in hosts]
    met.reset()
    monkeypatch.setattr(worker_module, "utcnow", lambda: utcnow() + first.ttl / 2)
    second.probe_all()  # w1 holds them
    assert len(probed) == 3
    monkeypatch.setattr(worker_module, "utcnow", lambda: utcnow() + first.ttl * 2)
    second.probe_all()  # w1 stopped renewing: w2 takes them over
    assert sorted(probed[3:]) == [("w2", h) for h in hosts]
    second.release()
    met.reset()
    first.probe_all()
    assert sorted(probed[6:]) == [("w1", h) for h in hosts]


def test_a_probe_whose_host_another_worker_took_over_records_nothing(client, settings, monkeypatch):
    from buddo_deploy import worker as worker_module
    from buddo_deploy.results import PlaybookResult

    d = running(client, settings)
    gone = {d.host: {"containers": [], "probes": {}}}  # its container is gone: a verdict would heal it
    monkeypatch.setattr(worker_module, "run_playbook",
                        lambda *a, **k: PlaybookResult(status="successful", rc=0, stats={"buddo_health": gone}))
    slow, holder = worker_module.HealthProber(settings, "slow"), worker_module.HealthProber(settings, "holder")
    assert worker_module.leases.take(holder.lease_of(d.host), "holder", holder.ttl, utcnow())
    assert slow.probe_host(d.host) == {}  # its probe ran, but the host is the holder's now
    assert Deployment.get_by_id(d.id).health_status == "healthy"
    assert holder.probe_host(d.host) == {str(d.id): "restarted"}


def test_a_probe_that_began_before_the_deployment_last_changed_is_not_acted_on(client, settings):
    """The probe saw the container between create and start (or the one a converge replaced):
    the converge recorded its outcome since, so that view is stale and the next cycle judges."""
    d = running(client, settings)
    gone = {"containers": [], "probes": {}}
    before = Deployment.get_by_id(d.id).updated_at - dt.timedelta(seconds=1)
    assert engine.record_health(d.host, gone, POLICY, observed_since=before) == {}
    restarts = AuditEntry.select().where((AuditEntry.deployment == d.id) & (AuditEntry.action == "restart"))
    assert Deployment.get_by_id(d.id).health_status == "healthy" and restarts.count() == 0
    assert engine.record_health(d.host, gone, POLICY, observed_since=utcnow()) == {str(d.id): "restarted"}
