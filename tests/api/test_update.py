"""PATCH /api/deploy/apps/{id} (issue 20): change a running deployment in place, with a new release."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from buddo_deploy.crypto import decrypt_env
from buddo_deploy.models import AuditEntry, BillingAccount, BillingCycle, Deployment, Job, LedgerEntry, Release, utcnow

from tests.helpers import auth, converged, create_deployment, digest, ran, run_job

IMAGE = "docker.io/library/nginx:latest"


def running(client, settings, **body: Any) -> str:
    ident = create_deployment(client, image=IMAGE, env_vars={"A": "1", "B": "2"}, **body)
    run_job(settings, ran(1))
    return ident


def patch(client, ident: str, body: Any, operator: str = "operator-1") -> Any:
    return client.simulate_patch(f"/api/deploy/apps/{ident}", json=body, headers=auth(operator))


def env_of(settings, ident: str) -> dict[str, str]:
    return decrypt_env(settings.secret_key, Deployment.get_by_id(ident).env_vars_encrypted)


def test_an_env_merge_keeps_the_id_makes_a_new_generation_and_audits_names_only(client, settings):
    ident = running(client, settings)
    before = Deployment.get_by_id(ident)
    resp = patch(client, ident, {"env_vars": {"B": "two-secret-value", "C": "3", "A": None}})
    assert resp.status_code == 200, resp.text
    shown = resp.json["deployment"]
    assert shown["id"] == ident and shown["env_var_names"] == ["B", "C"] and shown["status"] == "deploying"
    assert env_of(settings, ident) == {"B": "two-secret-value", "C": "3"}
    after = Deployment.get_by_id(ident)
    assert (after.generation, after.revision) == (before.generation + 1, before.revision + 1)
    assert after.pull_revision != after.revision  # the same image: the version that served, by its digest
    [entry] = AuditEntry.select().where((AuditEntry.deployment == ident) & (AuditEntry.action == "update"))
    assert json.loads(entry.details) == {"changed": ["env_vars"], "env_vars": {"set": ["B", "C"], "unset": ["A"]}}
    assert "two-secret-value" not in entry.details
    # The converge runs it with the new env; its success is release 2, with the env it ran.
    job, plan = run_job(settings, ran(1))
    assert plan.secrets == {ident: {"B": "two-secret-value", "C": "3"}}
    assert plan.items[0]["image"].endswith("@" + digest(1))
    [second] = Release.select().where((Release.deployment == ident) & (Release.number == 2))
    assert json.loads(second.env_var_names) == ["B", "C"] and second.port == 3000
    assert Deployment.get_by_id(ident).status == "running"
    listed = client.simulate_get(f"/api/deploy/apps/{ident}/releases", headers=auth()).json["releases"]
    assert [(r["number"], r["env_var_names"], r["port"]) for r in listed] == [(2, ["B", "C"], 3000),
                                                                            (1, ["A", "B"], 3000)]


def test_a_patch_that_changes_nothing_is_200_and_runs_nothing(client, settings):
    ident = running(client, settings)
    before = Deployment.get_by_id(ident)
    jobs = Job.select().count()
    for body in ({}, {"env_vars": {"A": "1"}}, {"env_vars": {"Z": None}}, {"image": IMAGE, "port": 3000},
                 {"tier": before.tier.slug}):
        resp = patch(client, ident, body)
        assert resp.status_code == 200, (body, resp.text)
    assert Deployment.get_by_id(ident).generation == before.generation and Job.select().count() == jobs
    assert AuditEntry.select().where(AuditEntry.action == "update").count() == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"colour": "red"}, "colour"),
    ({"env_vars": {"1BAD": "x"}}, "env_vars.1BAD.[key]"),
    ({"env_vars": {"OK": 5}}, "env_vars.OK"),
    ({"port": 0}, "port"),
    ({"port": "80"}, "port"),
    ({"image": "evil.example.com/x:latest"}, "image"),
    ({"tier": "Not A Slug"}, "tier"),
    ({"env_vars": {f"V{i}": "x" for i in range(49)}}, "env_vars"),  # 2 kept + 49 = 51
])
def test_bad_input_is_422_with_the_field_and_changes_nothing(client, settings, body, field):
    ident = running(client, settings)
    before = Deployment.get_by_id(ident)
    resp = patch(client, ident, body)
    assert resp.status_code == 422, resp.text
    assert field in [d["field"] for d in resp.json["error"]["details"]], resp.json
    after = Deployment.get_by_id(ident)
    assert (after.generation, after.env_vars_encrypted) == (before.generation, before.env_vars_encrypted)


def test_malformed_json_is_400_and_an_unknown_tier_404(client, settings):
    ident = running(client, settings)
    bad = client.simulate_patch(f"/api/deploy/apps/{ident}", body="{nope", headers=auth())
    assert bad.status_code == 400 and bad.json["error"]["code"] == "malformed_json"
    unknown = patch(client, ident, {"tier": "no-such-tier"})
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "tier_not_found"


def test_only_a_running_deployment_of_ones_own_changes(client, settings):
    ident = running(client, settings)
    assert patch(client, ident, {"port": 8080}, operator="operator-2").status_code == 403
    client.simulate_post(f"/api/deploy/apps/{ident}/stop", headers=auth())
    stopped = patch(client, ident, {"port": 8080})
    assert stopped.status_code == 422 and stopped.json["error"]["code"] == "deployment_stopped"
    client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth())
    gone = patch(client, ident, {"port": 8080})
    assert gone.status_code == 422 and gone.json["error"]["code"] == "deployment_destroyed"


def test_a_new_image_pulls_its_tag_and_a_rollback_restores_image_env_and_port_together(client, settings):
    ident = running(client, settings)
    resp = patch(client, ident, {"image": "docker.io/library/nginx:1.27", "port": 8080,
                                 "env_vars": {"A": "changed"}})
    assert resp.status_code == 200, resp.text
    assert json.loads(AuditEntry.select().where(AuditEntry.action == "update").get().details)["changed"] == [
        "image", "env_vars", "port"]
    _, plan = run_job(settings, ran(2))
    assert plan.items[0]["image"] == "docker.io/library/nginx:1.27" and plan.items[0]["pull"] == "always"
    assert plan.items[0]["port"] == 8080
    rolled = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", headers=auth())
    assert rolled.status_code == 200, rolled.text
    d = Deployment.get_by_id(ident)
    assert (d.container_image, d.port, d.pinned_digest) == (IMAGE, 3000, digest(1))
    assert env_of(settings, ident) == {"A": "1", "B": "2"}


def test_an_update_whose_new_container_never_answers_leaves_the_old_config_desired(client, settings):
    ident = running(client, settings)
    patch(client, ident, {"env_vars": {"A": "breaks-it"}, "port": 9000})
    run_job(settings, lambda plan: converged(plan, ok=False, kind="app", task="Run the app containers",
                                              message="app did not answer"))
    d = Deployment.get_by_id(ident)
    assert d.status == "running" and d.port == 3000 and env_of(settings, ident) == {"A": "1", "B": "2"}
    entry = AuditEntry.select().where(AuditEntry.action == "update").get()
    assert entry.status == "failed" and json.loads(entry.details)["rolled_back"] is True


def test_a_tier_change_keeps_the_id_and_bills_a_new_cycle_crediting_the_unused_part(client, settings):
    ident = running(client, settings, tier="buddo-starter")
    d = Deployment.get_by_id(ident)
    # A third of the paid cycle is used.
    cycle = dt.timedelta(seconds=settings.billing_cycle_s)
    Deployment.update(next_billing_at=utcnow() + cycle * 2 / 3).where(Deployment.id == ident).execute()
    points = BillingAccount.get_by_id(d.operator_id).points_balance
    resp = patch(client, ident, {"tier": "buddo-pro"})
    assert resp.status_code == 200, resp.text
    after = Deployment.get_by_id(ident)
    assert (after.id, after.subdomain, after.memory_limit_mb, after.tier.slug) == (d.id, d.subdomain, 512, "buddo-pro")
    assert after.billing_cycle == d.billing_cycle + 1 and after.next_billing_at > utcnow() + cycle * 0.99
    [refund] = LedgerEntry.select().where((LedgerEntry.kind == "adjustment") & (LedgerEntry.deployment == ident))
    assert 333 <= refund.amount <= 334 and json.loads(refund.details)["reason"] == "tier_change"
    new = BillingCycle.get((BillingCycle.deployment == ident) & (BillingCycle.cycle == d.billing_cycle))
    assert (new.amount, new.state) == (2000, "paid")
    assert 166 <= new.stipend_points <= 167  # 200, less the unused two thirds of the old cycle's 50
    assert BillingAccount.get_by_id(d.operator_id).points_balance == points + refund.amount - 2000 + new.stipend_points
    assert json.loads(AuditEntry.select().where(AuditEntry.action == "update").get().details)["tier"] == {
        "from": "buddo-starter", "to": "buddo-pro"}
    _, plan = run_job(settings, ran(1))
    assert plan.items[0]["memory_limit_mb"] == 512


def test_a_tier_change_to_a_smaller_stipend_credits_the_price_and_takes_back_the_unused_stipend(client, settings):
    """Both adjustments of one cycle are kept (the fuzzer found them colliding on the ledger's key)."""
    ident = running(client, settings, tier="buddo-pro")
    cycle = dt.timedelta(seconds=settings.billing_cycle_s)
    Deployment.update(next_billing_at=utcnow() + cycle / 2).where(Deployment.id == ident).execute()
    resp = patch(client, ident, {"tier": "buddo-starter"})
    assert resp.status_code == 200, resp.text
    reasons = sorted(json.loads(e.details)["reason"] for e in LedgerEntry.select().where(
        (LedgerEntry.kind == "adjustment") & (LedgerEntry.deployment == ident)))
    assert reasons == ["tier_change", "tier_change_unused_stipend"]
    taken = LedgerEntry.get((LedgerEntry.deployment == ident) & (LedgerEntry.amount < 0)
                            & (LedgerEntry.kind == "adjustment"))
    assert -51 <= taken.amount <= -49  # half of pro's 200, less starter's 50


def test_a_tier_change_is_refused_when_the_new_tier_forbids_the_custom_domain_or_the_account_cannot_pay(
        client, settings):
    ident = running(client, settings, tier="btc-pro", custom_domain="shop.example.com")
    refused = patch(client, ident, {"tier": "buddo-pro"})
    assert refused.status_code == 422 and refused.json["error"]["code"] == "custom_domain_not_allowed"
    assert refused.json["error"]["details"][0]["field"] == "tier"
    other = running(client, settings, tier="buddo-starter", subdomain="poor-app")
    operator = Deployment.get_by_id(other).operator_id
    BillingAccount.update(points_balance=10).where(BillingAccount.operator_id == operator).execute()
    Deployment.update(next_billing_at=utcnow()).where(Deployment.id == other).execute()  # nothing unused
    poor = patch(client, other, {"tier": "buddo-pro"})
    assert poor.status_code == 402 and poor.json["error"]["details"]["reason"] == "insufficient_balance"
    assert Deployment.get_by_id(other).tier.slug == "buddo-starter"
    assert BillingAccount.get_by_id(operator).points_balance == 10
    assert Deployment.get_by_id(ident).tier.slug == "btc-pro"


def test_a_tier_change_counts_against_the_new_tiers_limit(client, settings):
    for i in range(3):  # buddo-starter allows 3
        create_deployment(client, image=IMAGE, tier="buddo-starter", subdomain=f"s{i}")
    ident = running(client, settings, tier="buddo-pro", subdomain="pro-app")
    while run_job(settings, ran(1))[0] is not None:
        pass
    resp = patch(client, ident, {"tier": "buddo-starter"})
    assert resp.status_code == 429 and resp.json["error"]["code"] == "tier_deployment_limit"


def test_the_openapi_document_describes_the_patch(client):
    doc = client.simulate_get("/api/deploy/openapi.json").json
    op = doc["paths"]["/api/deploy/apps/{deployment_id}"]["patch"]
    assert op["operationId"] == "updateDeployment"
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/DeploymentUpdate")
    assert {"getDeploymentStatus", "rollbackDeployment"} <= set(op["responses"]["200"]["links"])
    schema = doc["components"]["schemas"]["DeploymentUpdate"]
    assert set(schema["properties"]) == {"image", "env_vars", "port", "tier", "health_check"}
    create_links = doc["paths"]["/api/deploy/apps"]["post"]["responses"]["201"]["links"]
    assert "updateDeployment" in create_links


CHECK = {"path": "/healthz", "expected_status": 204, "interval_s": 30, "timeout_s": 5, "grace_s": 90}


def test_a_health_check_is_given_at_create_shown_sent_to_the_engine_and_changed_by_patch(client, settings):
    plain = running(client, settings, subdomain="plain")
    shown = client.simulate_get(f"/api/deploy/apps/{plain}", headers=auth()).json["deployment"]
    # None given: null, the platform's own (any answer gates a new container); sent back, nothing runs.
    assert shown["health_check"] is None
    queued = Job.select().count()
    assert patch(client, plain, {"health_check": shown["health_check"]}).status_code == 200
    assert Job.select().count() == queued
    resp = client.simulate_post("/api/deploy/apps", headers=auth(), json={
        "subdomain": "checked", "image": IMAGE, "tier": "buddo-starter", "health_check": CHECK})
    assert resp.status_code == 201, resp.text
    ident = resp.json["deployment"]["id"]
    assert resp.json["deployment"]["health_check"] == CHECK
    _, plan = run_job(settings, ran(1))
    item = plan.items[0]
    assert (item["health_path"], item["health_status"], item["health_timeout_s"], item["health_grace_s"]) == (
        "/healthz", 204, 5, 90)
    # A check of nothing but a path: any status below 500 is healthy (1 in the item).
    changed = patch(client, ident, {"health_check": {"path": "/up"}})
    assert changed.status_code == 200 and changed.json["deployment"]["health_check"]["expected_status"] is None
    entry = AuditEntry.select().where(AuditEntry.action == "update").get()
    assert json.loads(entry.details)["changed"] == ["health_check"]
    _, plan = run_job(settings, ran(1))
    assert (plan.items[0]["health_path"], plan.items[0]["health_status"]) == ("/up", 1)
    # Release 2 ran with it; a rollback to release 1 brings back the first check.
    client.simulate_post(f"/api/deploy/apps/{ident}/rollback", headers=auth())
    assert json.loads(Deployment.get_by_id(ident).health_check) == CHECK
    same = patch(client, ident, {"health_check": CHECK})
    assert same.status_code == 200 and Job.select().where(Job.state == "queued").count() == 1  # the rollback's


@pytest.mark.parametrize("check", [
    {"path": "healthz"}, {"path": "/with space"}, {"expected_status": 99}, {"expected_status": 600},
    {"interval_s": 4}, {"timeout_s": 0}, {"grace_s": 0}, {"grace_s": 601}, {"unknown": 1},
])
def test_a_health_check_out_of_bounds_is_422(client, settings, check):
    resp = client.simulate_post("/api/deploy/apps", headers=auth(), json={
        "subdomain": "bad-check", "image": IMAGE, "tier": "buddo-starter", "health_check": check})
    assert resp.status_code == 422, resp.text
    assert all(d["field"].startswith("health_check") for d in resp.json["error"]["details"])


def test_the_prober_counts_a_deployment_only_as_often_as_its_check_asks(client, settings):
    from buddo_deploy.services import engine

    ident = running(client, settings)
    Deployment.update(health_check=json.dumps({**CHECK, "interval_s": 3600})).where(
        Deployment.id == ident).execute()
    d = Deployment.get_by_id(ident)
    from buddo_deploy.services import state

    report = {"containers": [{"id": "c1", "deployment_id": ident, "spec": state.spec_of(d), "state": "running"}],
              "probes": {"c1": {"status": 500, "healthy": False, "error": ""}}}
    policy = engine.HealthPolicy(failures_before_restart=3, max_restarts=3, timeout_s=60)
    Deployment.update(last_health_check=utcnow()).where(Deployment.id == ident).execute()
    assert engine.record_health(d.host, report, policy) == {}  # probed moments ago: not due
    Deployment.update(last_health_check=utcnow() - dt.timedelta(hours=2)).where(Deployment.id == ident).execute()
    assert engine.record_health(d.host, report, policy) == {ident: "unhealthy"}
