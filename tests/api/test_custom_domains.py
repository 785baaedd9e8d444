"""Custom domains: the DNS check's transitions (a fake resolver), routing, the ask endpoint (its secret, its
rate limit) and its budget."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from buddo_deploy.models import AuditEntry, Deployment, Job, RateLimitCounter, utcnow
from buddo_deploy.services import domains, state

from tests.helpers import ASK_SECRET, auth, create_body, run_job

DOMAIN = "shop.example.com"
TARGET = "shop.localhost"  # <subdomain>.<base domain> of the test settings


class FakeResolver:
    def __init__(self) -> None:
        self.zone: dict[tuple[str, str], list[str]] = {}
        self.failing = False
        self.asked: list[str] = []

    def records(self, name: str, rdtype: str) -> list[str]:
        self.asked.append(name)
        if self.failing:
            raise domains.LookupFailed(f"{rdtype} {name}: Timeout")
        return list(self.zone.get((name, rdtype), []))


@pytest.fixture
def dns_zone():
    return FakeResolver()


def checker(settings, resolver, addresses=()):
    return domains.DomainChecker(settings.base_domain, 300, 60, resolver, lambda host: tuple(addresses))


def create(client, **body):
    resp = client.simulate_post("/api/deploy/apps", headers=auth(), json=create_body(
        tier="btc-starter", subdomain="shop", custom_domain=DOMAIN, **body))
    assert resp.status_code == 201, resp.text
    return resp.json["deployment"]


def transitions(ident):
    return [json.loads(e.details) | {"status": e.status} for e in AuditEntry.select().where(
        AuditEntry.deployment == ident).order_by(AuditEntry.inserted_at, AuditEntry.id)
        if e.details and json.loads(e.details).get("reason") == "custom_domain"]


def ask(client, domain=DOMAIN, token=ASK_SECRET, remote_addr="10.0.0.5"):
    """Caddy's ask, from a container host (10.0.0.5) with the secret in the URL."""
    params = {"domain": domain} | ({"token": token} if token is not None else {})
    return client.simulate_get("/api/deploy/internal/domain-check", params=params, remote_addr=remote_addr)


def budget_spent():
    return {row.key: row.count for row in RateLimitCounter.select() if row.key.startswith("certificate|")}


def test_status_in_the_object_and_the_openapi_schema(client):
    plain = client.simulate_post("/api/deploy/apps", headers=auth(), json=create_body()).json["deployment"]
    assert plain["custom_domain_status"] is None
    created = create(client)
    assert created["custom_domain_status"] == "pending"
    assert client.simulate_get(f"/api/deploy/apps/{created['id']}", headers=auth()).json["deployment"] == created
    schema = client.simulate_get("/api/deploy/openapi.json").json["components"]["schemas"]["DeploymentOut"]
    prop = schema["properties"]["custom_domain_status"]
    assert "custom_domain_status" in schema["required"]
    assert {"enum": ["pending", "active", "misconfigured"], "type": "string"} in prop["anyOf"]


def test_pending_until_the_cname_points_here_then_routed(client, settings, dns_zone):
    ident = create(client)["id"]
    run_job(settings)  # the first deploy: the site without the custom domain
    d = Deployment.get_by_id(ident)
    assert state.desired_item(d)["custom_domain"] == ""
    check = checker(settings, dns_zone)

    assert check.check_due() == {ident: "pending"}  # no record yet
    assert check.check_due() == {}  # checked: not due again before the interval
    assert Deployment.get_by_id(ident).generation == d.generation and transitions(ident) == []

    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    Deployment.update(custom_domain_checked_at=None).execute()  # due (as after the interval)
    assert check.check_due() == {ident: "active"}
    d = Deployment.get_by_id(ident)
    assert d.custom_domain_status == "active" and d.status == "deploying"
    # Routing changed: a new generation, converged by a job whose document routes the domain.
    job = Job.get(Job.deployment == ident, Job.state == "queued")
    assert job.generation == d.generation
    _, plan = run_job(settings)
    assert plan.items[0]["custom_domain"] == DOMAIN
    [entry] = transitions(ident)
    assert entry["custom_domain_status"] == "active" and entry["previous_status"] == "pending"
    assert entry["records"] == [f"CNAME {TARGET}"] and entry["status"] == "completed"
    body = client.simulate_get(f"/api/deploy/apps/{ident}", headers=auth()).json["deployment"]
    assert body["custom_domain_status"] == "active" and body["status"] == "running"


def test_misconfigured_when_it_points_elsewhere_and_active_again_when_fixed(client, settings, dns_zone):
    ident = create(client)["id"]
    run_job(settings)
    check = checker(settings, dns_zone)
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    check.check_due()
    run_job(settings)

    def recheck():
        Deployment.update(custom_domain_checked_at=utcnow() - dt.timedelta(seconds=301)).execute()
        return check.check_due()

    dns_zone.zone[(DOMAIN, "CNAME")] = ["someone-else.example.net."]
    assert recheck() == {ident: "misconfigured"}
    _, plan = run_job(settings)
    assert plan.items[0]["custom_domain"] == ""  # no longer routed
    dns_zone.failing = True  # no answer: nothing concluded
    assert recheck() == {ident: "misconfigured"}
    dns_zone.failing = False
    del dns_zone.zone[(DOMAIN, "CNAME")]
    assert recheck() == {ident: "misconfigured"}  # gone after it was active: still not routed
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    assert recheck() == {ident: "active"}
    _, plan = run_job(settings)
    assert plan.items[0]["custom_domain"] == DOMAIN
    assert [(e["previous_status"], e["custom_domain_status"], e["status"]) for e in transitions(ident)] == [
        ("pending", "active", "completed"), ("active", "misconfigured", "completed"),
        ("misconfigured", "active", "completed")]


def test_pending_to_misconfigured_does_not_change_routing(client, settings, dns_zone):
    ident = create(client)["id"]
    run_job(settings)
    generation = Deployment.get_by_id(ident).generation
    dns_zone.zone[(DOMAIN, "CNAME")] = ["elsewhere.example.net."]
    assert checker(settings, dns_zone).check_due() == {ident: "misconfigured"}
    assert Deployment.get_by_id(ident).generation == generation
    assert [e["status"] for e in transitions(ident)] == ["completed"]


def test_a_and_aaaa_records_must_all_be_the_hosts_addresses(client, settings, dns_zone):
    ident = create(client)["id"]
    run_job(settings)
    check = checker(settings, dns_zone, addresses=("192.0.2.10", "2001:db8::10"))
    dns_zone.zone[(DOMAIN, "A")] = ["192.0.2.10", "198.51.100.7"]
    assert check.check_due() == {ident: "misconfigured"}
    dns_zone.zone[(DOMAIN, "A")] = ["192.0.2.10"]
    dns_zone.zone[(DOMAIN, "AAAA")] = ["2001:db8:0:0::10"]
    Deployment.update(custom_domain_checked_at=None).execute()
    assert check.check_due() == {ident: "active"}


def test_only_running_deployments_are_checked(client, settings, dns_zone):
    ident = create(client)["id"]
    client.simulate_post(f"/api/deploy/apps/{ident}/stop", headers=auth())
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    assert checker(settings, dns_zone).check_due() == {}
    assert dns_zone.asked == []


def test_host_addresses_from_the_inventory(tmp_path):
    from buddo_deploy.inventory import host_addresses

    (tmp_path / "host_vars").mkdir()
    (tmp_path / "hosts.yml").write_text(
        "container_hosts:\n  hosts:\n    h1:\n      buddo_public_ipv4: 192.0.2.10\n    h2: {}\n")
    (tmp_path / "host_vars" / "h1.yml").write_text("buddo_host_memory_mb: 1024\nbuddo_public_ipv6: '2001:db8::10'\n")
    (tmp_path / "host_vars" / "h2.yml").write_text("buddo_host_memory_mb: 1024\n")
    assert host_addresses(tmp_path, "h1") == ("192.0.2.10", "2001:db8::10")
    assert host_addresses(tmp_path, "h2") == ()
    assert host_addresses(tmp_path, "h3") == ()


def activate(ident):
    Deployment.update(custom_domain_status="active").where(Deployment.id == ident).execute()


def test_the_ask_endpoint_approves_only_verified_domains_of_live_deployments(client, caplog):
    created = create(client)
    caplog.set_level(logging.WARNING, logger="buddo_deploy")
    resp = ask(client)
    assert resp.status_code == 403 and resp.json["error"]["code"] == "domain_not_verified"
    assert '"domain_not_verified"' in caplog.text and DOMAIN in caplog.text
    activate(created["id"])
    assert ask(client).status_code == 200
    assert ask(client, "SHOP.example.com").status_code == 200
    unknown = ask(client, "other.example.com")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "domain_not_bound"
    assert client.simulate_get("/api/deploy/internal/domain-check", params={"token": ASK_SECRET}).status_code == 404
    for malformed in ("shop.example.com\n", "shop.example.com\x00", "a\x00b.com", "-x.com"):
        assert ask(client, malformed).status_code == 404, repr(malformed)
    client.simulate_delete(f"/api/deploy/apps/{created['id']}", headers=auth())
    assert ask(client).status_code == 404


@pytest.mark.parametrize("token", [None, "", "wrong", ASK_SECRET[:-1], ASK_SECRET + "x", ASK_SECRET.upper(),
                                   "é" * 8])
def test_only_the_ask_secret_opens_the_ask_endpoint(client, caplog, token):
    activate(create(client)["id"])
    caplog.set_level(logging.WARNING, logger="buddo_deploy")
    refused = ask(client, token=token)
    assert refused.status_code == 403 and refused.json["error"]["code"] == "ask_forbidden"
    assert refused.json["error"]["request_id"]
    assert budget_spent() == {}
    assert '"ask_forbidden"' in caplog.text and ASK_SECRET not in caplog.text
    assert ask(client).status_code == 200


def test_without_an_ask_secret_the_endpoint_refuses_everyone(client_with):
    client = client_with(ask_secret=None)
    activate(create(client)["id"])
    for token in (None, ASK_SECRET, ""):
        resp = ask(client, token=token)
        assert resp.status_code == 503 and resp.json["error"]["code"] == "ask_not_configured"
    assert budget_spent() == {}


def test_caddys_asks_are_rate_limited_per_address(client_with):
    client = client_with(rate_limit_ask=3, rate_limit_window_s=86400, cert_budget_per_domain=10)
    activate(create(client)["id"])
    assert [ask(client).status_code for _ in range(4)] == [200, 200, 200, 429]
    limited = ask(client)
    assert limited.json["error"]["code"] == "rate_limited" and limited.headers["Retry-After"]
    assert ask(client, remote_addr="10.0.0.6").status_code == 200  # another host


def test_the_issuance_budget_per_domain_and_overall(client_with, caplog):
    client = client_with(cert_budget_per_domain=2, cert_budget_per_hour=3)
    first = create(client)["id"]
    other = client.simulate_post("/api/deploy/apps", headers=auth(), json=create_body(
        tier="btc-starter", subdomain="other", custom_domain="other.example.com")).json["deployment"]["id"]
    activate(first)
    activate(other)
    caplog.set_level(logging.WARNING, logger="buddo_deploy")
    assert [ask(client).status_code for _ in range(3)] == [200, 200, 429]
    assert ask(client).json["error"]["code"] == "certificate_budget_exhausted"
    assert ask(client, "other.example.com").status_code == 200  # the third approval of the hour
    refused = ask(client, "other.example.com")
    assert refused.status_code == 429 and "all domains" in refused.json["error"]["message"]
    assert caplog.text.count("certificate_budget_exhausted") == 3


def test_the_budget_window_is_the_hour(client):
    ident = create(client)["id"]
    activate(ident)
    hour = 1_800_000_000 // 3600 * 3600
    assert [domains.approve_certificate(DOMAIN, 1, 10, now=hour + 10).approved for _ in range(2)] == [True, False]
    assert domains.approve_certificate(DOMAIN, 1, 10, now=hour + 3600).approved


def test_migration_0007_makes_existing_custom_domains_pending(settings, monkeypatch):
    import uuid

    import peewee
    from buddo_deploy import migrations
    from buddo_deploy.db import open_database
    from buddo_deploy.services.tiers import load_tier_file

    everything = migrations.available
    monkeypatch.setattr(migrations, "available", lambda: [m for m in everything() if m.version < 7])
    db = open_database(settings.database_url)
    migrations.upgrade(db)
    # The tier as a row of that schema (the model knows later columns, and writes their defaults).
    [entry] = [t for t in load_tier_file(settings.tiers_file) if t["slug"] == "btc-starter"]
    tier = str(uuid.uuid4())
    peewee.Table("tiers").bind(db).insert(id=tier, **{k: v for k, v in entry.items() if k != "disk_limit_mb"}).execute()
    now = utcnow()
    ids = []
    for name, domain in (("with", DOMAIN), ("without", None)):
        ident = uuid.uuid4()
        ids.append(ident)
        # Only the columns that existed before 0007.
        Deployment.insert(id=ident, operator_id="o", app_id="a", tier=tier, container_name=name,
                          container_image="i", subdomain=name, custom_domain=domain, port=80, host="h",
                          host_port=20000 + len(ids) * 2, status="running", next_billing_at=now,
                          memory_limit_mb=1, cpu_limit_millicores=1, inserted_at=now, updated_at=now).execute()
    monkeypatch.setattr(migrations, "available", everything)
    assert [m.version for m in migrations.upgrade(db)][0] == 7
    assert [Deployment.get_by_id(i).custom_domain_status for i in ids] == ["pending", None]
    db.close()
