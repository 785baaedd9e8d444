"""Custom domains: proof of a claim (a fake resolver), expiry of unverified claims, routing, the ask
endpoint (its secret, its rate limit) and the issuance budget."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid

import peewee
import pytest
from buddo_deploy.models import AuditEntry, Deployment, Job, JobTarget, RateLimitCounter, database_proxy, utcnow
from buddo_deploy.services import domains, state

from tests.helpers import ASK_SECRET, auth, create_body, run_job

DOMAIN = "shop.example.com"
TARGET = "shop.localhost"  # <subdomain>.<base domain> of the test settings
CHALLENGE = f"_buddo-challenge.{DOMAIN}"
EXPIRY = dt.timedelta(hours=72)  # the default BUDDO_DOMAIN_CLAIM_EXPIRY


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


def create(client, operator="operator-1", subdomain="shop", domain=DOMAIN, **body):
    resp = client.simulate_post("/api/deploy/apps", headers=auth(operator), json=create_body(
        tier="btc-starter", subdomain=subdomain, custom_domain=domain, **body))
    assert resp.status_code == 201, resp.text
    return resp.json["deployment"]


def claim(client, operator="operator-2", subdomain="owner", domain=DOMAIN):
    """A create by someone else: the response, whatever it is."""
    return client.simulate_post("/api/deploy/apps", headers=auth(operator), json=create_body(
        tier="btc-starter", subdomain=subdomain, custom_domain=domain))


def transitions(ident):
    return [json.loads(e.details) | {"status": e.status} for e in AuditEntry.select().where(
        AuditEntry.deployment == ident).order_by(AuditEntry.inserted_at, AuditEntry.id)
        if e.details and json.loads(e.details).get("reason") == "custom_domain"]


def ask(client, domain=DOMAIN, token=ASK_SECRET, remote_addr="10.0.0.5"):
    """Caddy's ask, from a container host (10.0.0.5) with the secret in the URL."""
    params = {"domain": domain} | ({"token": token} if token is not None else {})
    return client.simulate_get("/api/deploy/internal/domain-check", params=params, remote_addr=remote_addr)


def txt(deployment):
    """The TXT record the API shows for a deployment: (name, value)."""
    record = deployment["custom_domain_verification"]
    return record["name"], record["value"]


def recheck(check):
    Deployment.update(custom_domain_checked_at=None).execute()  # due (as after the interval)
    return check.check_due()


def age(ident, by):
    """Pretend the claim has been unverified for ``by`` longer."""
    d = Deployment.get_by_id(ident)
    Deployment.update(custom_domain_unverified_since=d.custom_domain_unverified_since - by).where(
        Deployment.id == ident).execute()


def budget_spent():
    return {row.key: row.count for row in RateLimitCounter.select() if row.key.startswith("certificate|")}


# --- the claim and its proof ---------------------------------------------------


def test_status_and_verification_records_in_the_object_and_the_openapi_schema(client):
    plain = client.simulate_post("/api/deploy/apps", headers=auth(), json=create_body()).json["deployment"]
    assert plain["custom_domain_status"] is None and plain["custom_domain_verification"] is None
    created = create(client)
    assert created["custom_domain_status"] == "pending"
    verification = created["custom_domain_verification"]
    assert verification["type"] == "TXT" and verification["name"] == CHALLENGE
    assert re.fullmatch(r"buddo-verify=[0-9a-f]{32}", verification["value"])
    assert verification["alternatives"] == [{"type": "CNAME", "name": DOMAIN, "value": TARGET}]
    assert client.simulate_get(f"/api/deploy/apps/{created['id']}", headers=auth()).json["deployment"] == created
    # A token of its own per claim.
    other = create(client, subdomain="other", domain="other.example.com")
    assert other["custom_domain_verification"]["value"] != verification["value"]

    schemas = client.simulate_get("/api/deploy/openapi.json").json["components"]["schemas"]
    out = schemas["DeploymentOut"]
    prop = out["properties"]["custom_domain_status"]
    assert {"custom_domain_status", "custom_domain_verification"} <= set(out["required"])
    assert {"enum": ["pending", "active", "misconfigured", "expired"], "type": "string"} in prop["anyOf"]
    assert {"$ref": "#/components/schemas/CustomDomainVerificationOut"} in (
        out["properties"]["custom_domain_verification"]["anyOf"])
    assert set(schemas["CustomDomainVerificationOut"]["required"]) == {"type", "name", "value", "alternatives"}


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
    assert recheck(check) == {ident: "active"}
    d = Deployment.get_by_id(ident)
    assert d.custom_domain_status == "active" and d.status == "deploying"
    assert d.custom_domain_unverified_since is None  # verified: the expiry clock stops
    # Routing changed: a new generation, converged by a job whose document routes the domain.
    target = JobTarget.select().join(Job).where((JobTarget.deployment == ident) & (Job.state == "queued")).get()
    assert target.generation == d.generation
    _, plan = run_job(settings)
    assert plan.items[0]["custom_domain"] == DOMAIN
    [entry] = transitions(ident)
    assert entry["custom_domain_status"] == "active" and entry["previous_status"] == "pending"
    assert entry["records"] == [f"CNAME {TARGET}"] and entry["status"] == "completed"
    assert "CNAME" in entry["message"]
    body = client.simulate_get(f"/api/deploy/apps/{ident}", headers=auth()).json["deployment"]
    assert body["custom_domain_status"] == "active" and body["status"] == "running"
    verified = {c["type"]: c for c in body["conditions"]}["DomainVerified"]
    # Since when it is verified, the row does not say: no transition time rather than a guess.
    assert (verified["status"], verified["reason"]) == ("True", "Verified") and "last_transition_time" not in verified


def test_an_unverified_claim_shows_since_when_in_its_condition(client):
    created = create(client)
    verified = {c["type"]: c for c in created["conditions"]}["DomainVerified"]
    assert (verified["status"], verified["reason"]) == ("False", "AwaitingProof")
    since = Deployment.get_by_id(created["id"]).custom_domain_unverified_since
    assert verified["last_transition_time"] == since.isoformat(timespec="seconds") + "Z"
    plain = client.simulate_post("/api/deploy/apps", headers=auth(), json=create_body()).json["deployment"]
    assert "DomainVerified" not in {c["type"] for c in plain["conditions"]}


def test_the_claims_txt_token_verifies_and_another_claims_token_does_not(client, settings, dns_zone):
    mine = create(client)
    other = create(client, operator="operator-2", subdomain="other", domain="other.example.com")
    run_job(settings)
    run_job(settings)
    check = checker(settings, dns_zone)
    name, value = txt(mine)
    assert name == CHALLENGE
    # Someone else's token (and unrelated TXT records) at the challenge name prove nothing.
    dns_zone.zone[(name, "TXT")] = [txt(other)[1], "v=spf1 -all"]
    assert check.check_due() == {mine["id"]: "misconfigured", other["id"]: "pending"}
    assert transitions(mine["id"])[-1]["records"] == [f"TXT {txt(other)[1]}"]

    dns_zone.zone[(name, "TXT")] = [txt(other)[1], value]  # the TXT record the API showed
    assert recheck(check)[mine["id"]] == "active"
    _, plan = run_job(settings)
    assert plan.items[0]["custom_domain"] == DOMAIN
    entry = transitions(mine["id"])[-1]
    assert entry["records"] == [f"TXT {value}"] and "TXT record" in entry["message"]


def test_a_and_aaaa_records_to_the_shared_host_prove_nothing(client, settings, dns_zone):
    created = create(client)
    ident = created["id"]
    run_job(settings)
    check = checker(settings, dns_zone, addresses=("192.0.2.10", "2001:db8::10"))
    dns_zone.zone[(DOMAIN, "A")] = ["192.0.2.10"]
    dns_zone.zone[(DOMAIN, "AAAA")] = ["2001:db8:0:0::10"]
    assert check.check_due() == {ident: "misconfigured"}
    assert state.desired_item(Deployment.get_by_id(ident))["custom_domain"] == ""  # not routed
    [entry] = transitions(ident)
    assert entry["records"] == ["A/AAAA 192.0.2.10", "A/AAAA 2001:db8:0:0::10"]
    assert "point at the host, which proves no ownership" in entry["message"]
    assert CHALLENGE in entry["message"] and txt(created)[1] in entry["message"]
    assert recheck(check) == {ident: "misconfigured"}  # still, however often it is checked
    # An apex domain (no CNAME there): its A records stay, the TXT record proves the claim.
    dns_zone.zone[(CHALLENGE, "TXT")] = [txt(created)[1]]
    assert recheck(check) == {ident: "active"}


def test_misconfigured_when_the_proof_goes_and_active_again_when_it_is_back(client, settings, dns_zone):
    ident = create(client)["id"]
    run_job(settings)
    check = checker(settings, dns_zone)
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    check.check_due()
    run_job(settings)

    dns_zone.zone[(DOMAIN, "CNAME")] = ["someone-else.example.net."]
    assert recheck(check) == {ident: "misconfigured"}
    assert Deployment.get_by_id(ident).custom_domain_unverified_since is not None  # the expiry clock runs
    _, plan = run_job(settings)
    assert plan.items[0]["custom_domain"] == ""  # no longer routed
    dns_zone.failing = True  # no answer: nothing concluded
    assert recheck(check) == {ident: "misconfigured"}
    dns_zone.failing = False
    del dns_zone.zone[(DOMAIN, "CNAME")]
    assert recheck(check) == {ident: "misconfigured"}  # gone after it was active: still not routed
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    assert recheck(check) == {ident: "active"}
    assert Deployment.get_by_id(ident).custom_domain_unverified_since is None
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


# --- expiry: a claim nobody proves is released -------------------------------


def test_an_unverified_claim_expires_and_the_owner_then_claims_it(client, settings, dns_zone):
    squatter = create(client, operator="squatter", subdomain="squat")
    check = checker(settings, dns_zone)
    assert check.check_due() == {squatter["id"]: "pending"}  # the squatter cannot make DNS prove it

    taken = claim(client)
    assert taken.status_code == 422 and taken.json["error"]["code"] == "custom_domain_taken"
    details = taken.json["error"]["details"]
    assert details[0]["field"] == "custom_domain" and "released 72 h after" in details[0]["message"]
    assert "squat" not in taken.text  # nothing of the other claim shows
    age(squatter["id"], EXPIRY - dt.timedelta(minutes=1))
    assert check.expire_due() == {}
    assert claim(client).json["error"]["code"] == "custom_domain_taken"  # not expired yet

    age(squatter["id"], dt.timedelta(minutes=2))
    assert check.expire_due() == {squatter["id"]: DOMAIN}
    released = client.simulate_get(f"/api/deploy/apps/{squatter['id']}", headers=auth("squatter")).json["deployment"]
    assert released["custom_domain"] is None and released["custom_domain_status"] == "expired"
    assert released["custom_domain_verification"] is None
    assert released["status"] == squatter["status"]  # the app itself goes on
    [entry] = transitions(squatter["id"])
    assert (entry["custom_domain"], entry["previous_status"], entry["custom_domain_status"], entry["status"]) == (
        DOMAIN, "pending", "expired", "completed")
    assert "not verified for 72 h" in entry["message"]
    assert check.expire_due() == {}  # once

    owner = claim(client)
    assert owner.status_code == 201, owner.text
    owner = owner.json["deployment"]
    assert owner["custom_domain"] == DOMAIN and owner["custom_domain_status"] == "pending"
    dns_zone.zone[(CHALLENGE, "TXT")] = [txt(owner)[1]]
    assert recheck(check) == {owner["id"]: "active"}


def test_a_create_releases_an_expired_claim_without_waiting_for_the_sweep(client):
    squatter = create(client, operator="squatter", subdomain="squat")
    client.simulate_post(f"/api/deploy/apps/{squatter['id']}/stop", headers=auth("squatter"))  # not checked
    age(squatter["id"], EXPIRY + dt.timedelta(seconds=1))
    owner = claim(client)
    assert owner.status_code == 201, owner.text
    d = Deployment.get_by_id(squatter["id"])
    assert d.custom_domain is None and d.custom_domain_status == "expired"
    assert [e["custom_domain_status"] for e in transitions(squatter["id"])] == ["expired"]


def test_a_verified_domain_cannot_be_taken_while_it_points_here(client, settings, dns_zone):
    holder = create(client)
    ident = holder["id"]
    run_job(settings)
    check = checker(settings, dns_zone)
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    assert check.check_due() == {ident: "active"}
    run_job(settings)
    # However long ago it was claimed: a verified claim never expires.
    assert check.expire_due(utcnow() + 10 * EXPIRY) == {}
    assert claim(client).json["error"]["code"] == "custom_domain_taken"

    # The domain's DNS moves away: misconfigured (not routed), and the same expiry runs from now.
    dns_zone.zone[(DOMAIN, "CNAME")] = ["owner.localhost."]
    assert recheck(check) == {ident: "misconfigured"}
    run_job(settings)
    assert claim(client).json["error"]["code"] == "custom_domain_taken"
    assert check.expire_due(utcnow() + EXPIRY - dt.timedelta(minutes=1)) == {}
    age(ident, EXPIRY + dt.timedelta(seconds=1))
    assert check.expire_due() == {ident: DOMAIN}
    assert [(e["previous_status"], e["custom_domain_status"]) for e in transitions(ident)] == [
        ("pending", "active"), ("active", "misconfigured"), ("misconfigured", "expired")]
    new = claim(client)
    assert new.status_code == 201, new.text
    assert recheck(check) == {new.json["deployment"]["id"]: "active"}  # its CNAME: to owner.localhost


def test_verified_again_in_time_the_claim_stays(client, settings, dns_zone):
    ident = create(client)["id"]
    run_job(settings)
    check = checker(settings, dns_zone)
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    check.check_due()
    del dns_zone.zone[(DOMAIN, "CNAME")]
    assert recheck(check) == {ident: "misconfigured"}
    age(ident, EXPIRY - dt.timedelta(hours=1))
    dns_zone.zone[(DOMAIN, "CNAME")] = [f"{TARGET}."]
    assert recheck(check) == {ident: "active"}
    assert check.expire_due(utcnow() + 2 * EXPIRY) == {}
    assert Deployment.get_by_id(ident).custom_domain == DOMAIN


# --- the ask endpoint ----------------------------------------------------------


def activate(ident):
    Deployment.update(custom_domain_status="active", custom_domain_unverified_since=None).where(
        Deployment.id == ident).execute()


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


def test_a_thousand_asks_without_the_secret_leave_the_budget_untouched(client_with):
    """The measured attack: 4 anonymous asks for each of 10 active domains spent the hour's budget."""
    client = client_with(cert_budget_per_domain=3, cert_budget_per_hour=3)
    names = [f"shop{i}.example.com" for i in range(10)]
    for i, name in enumerate(names):
        ident = create(client, operator=f"operator-{i}", subdomain=f"shop{i}", domain=name)["id"]
        activate(ident)
        # Their certificates were approved (and issued) in an earlier hour.
        Deployment.update(custom_domain_approved_at=utcnow() - dt.timedelta(days=3)).where(
            Deployment.id == ident).execute()
    codes = {ask(client, names[i % 10], token=None if i % 2 else "guess", remote_addr="203.0.113.9").status_code
             for i in range(1000)}
    assert codes == {403, 429}  # refused, then rate-limited per address; never approved
    assert budget_spent() == {}
    # Caddy (a container host, with the secret) asks for them again, as after a restart: free.
    assert [ask(client, name).status_code for name in names] == [200] * 10
    assert budget_spent() == {}
    # A legitimate new domain is approved, and is the hour's first issuance.
    activate(create(client, subdomain="new", domain="new.example.com")["id"])
    approved = ask(client, "new.example.com")
    assert approved.status_code == 200, approved.text
    assert budget_spent() == {"certificate|new.example.com": 1, "certificate|*": 1}


def test_asks_for_an_already_approved_domain_cost_nothing(client_with):
    client = client_with(cert_budget_per_domain=1, cert_budget_per_hour=2)
    first = create(client)["id"]
    activate(first)
    assert ask(client).status_code == 200  # the first certificate: spends
    spent = budget_spent()
    assert spent == {f"certificate|{DOMAIN}": 1, "certificate|*": 1}
    # Caddy asks again (another host's handshake while it obtains, a renewal, a restart): free.
    assert [ask(client).status_code for _ in range(20)] == [200] * 20
    assert budget_spent() == spent
    assert Deployment.get_by_id(first).custom_domain_approved_at is not None
    # ... and after the hour too.
    assert domains.approve_certificate(DOMAIN, 1, 2, now=utcnow().timestamp() + 86400) == domains.Decision(True)
    # A new domain is then approved, and spends the hour's second issuance.
    other = create(client, subdomain="other", domain="other.example.com")["id"]
    activate(other)
    assert ask(client, "other.example.com").status_code == 200
    assert budget_spent()["certificate|*"] == 2
    third = create(client, subdomain="third", domain="third.example.com")["id"]
    activate(third)
    refused = ask(client, "third.example.com")
    assert refused.status_code == 429 and "all domains" in refused.json["error"]["message"]


def test_the_issuance_budget_counts_each_claims_first_certificate(client_with, caplog):
    client = client_with(cert_budget_per_domain=1, cert_budget_per_hour=10)
    first = create(client)["id"]
    activate(first)
    caplog.set_level(logging.WARNING, logger="buddo_deploy")
    assert ask(client).status_code == 200
    # The claim ends (destroyed, torn down) and a new claim of the same name wants a certificate
    # in the same hour: a new issuance, over the name's budget.
    client.simulate_delete(f"/api/deploy/apps/{first}", headers=auth())
    Deployment.update(released_at=utcnow()).where(Deployment.id == first).execute()
    activate(create(client, subdomain="again")["id"])
    refused = ask(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "certificate_budget_exhausted"
    assert f"for {DOMAIN!r} this hour" in refused.json["error"]["message"]
    assert caplog.text.count("certificate_budget_exhausted") == 1


def test_the_budget_window_is_the_hour(client):
    ident = create(client)["id"]
    activate(ident)
    hour = 1_800_000_000 // 3600 * 3600
    assert domains.approve_certificate(DOMAIN, 1, 10, now=hour + 10).spent
    Deployment.update(custom_domain_approved_at=None).execute()  # as a new claim of the name
    assert not domains.approve_certificate(DOMAIN, 1, 10, now=hour + 20).approved
    assert domains.approve_certificate(DOMAIN, 1, 10, now=hour + 3600).spent


def test_caddys_asks_are_rate_limited_per_address(client_with):
    client = client_with(rate_limit_ask=3, rate_limit_window_s=86400)
    activate(create(client)["id"])
    assert [ask(client).status_code for _ in range(4)] == [200, 200, 200, 429]
    limited = ask(client)
    assert limited.json["error"]["code"] == "rate_limited" and limited.headers["Retry-After"]
    assert ask(client, remote_addr="10.0.0.6").status_code == 200  # another host


def test_asks_without_the_secret_never_use_up_caddys_own(client_with):
    """Anonymous asks from Caddy's own address (a proxy in front of both, say) are refused and
    counted as failed authentications; Caddy's asks, with the secret, still have their whole limit."""
    client = client_with(rate_limit_ask=3, rate_limit_anonymous=1000, rate_limit_window_s=86400)
    activate(create(client)["id"])
    assert {ask(client, token="").status_code for _ in range(50)} == {403}
    assert [ask(client).status_code for _ in range(4)] == [200, 200, 200, 429]


# --- migrations ------------------------------------------------------------------


def _old_schema(settings, monkeypatch, before):
    """The database as migrations before ``before`` left it, with a btc-starter tier row; restore() upgrades."""
    import peewee
    from buddo_deploy import migrations
    from buddo_deploy.db import open_database
    from buddo_deploy.services.tiers import load_tier_file

    everything = migrations.available
    monkeypatch.setattr(migrations, "available", lambda: [m for m in everything() if m.version < before])
    db = open_database(settings.database_url)
    migrations.upgrade(db)
    # The tier as a row of that schema (the model knows later columns, and writes their defaults).
    [entry] = [t for t in load_tier_file(settings.tiers_file) if t["slug"] == "btc-starter"]
    tier = str(uuid.uuid4())
    peewee.Table("tiers").bind(db).insert(id=tier, **{k: v for k, v in entry.items() if k != "disk_limit_mb"}).execute()

    def restore():
        monkeypatch.setattr(migrations, "available", everything)
        return [m.version for m in migrations.upgrade(db)]

    return db, tier, restore


def _old_row(tier, name, domain, **columns):
    ident = uuid.uuid4()
    now = utcnow()
    given = dict(id=ident, operator_id="o", app_id="a", tier=tier, container_name=name,
                 container_image="i", subdomain=name, custom_domain=domain, port=80, host="h",
                 host_port=20000 + 2 * Deployment.select().count(), status="running", next_billing_at=now,
                 memory_limit_mb=1, cpu_limit_millicores=1, inserted_at=now, updated_at=now, **columns)
    # A row of that schema: the model's defaults for the columns it has, and what the caller gives.
    db = database_proxy.obj
    have = {column.name for column in db.get_columns("deployments")}
    fields = Deployment._meta.fields
    row = {f.column_name: (f.default() if callable(f.default) else f.default) for f in fields.values()
           if f.default is not None and f.column_name in have}
    row |= {(fields[k].column_name if k in fields else k): (str(v) if isinstance(v, uuid.UUID) else v)
            for k, v in given.items()}
    peewee.Table("deployments").bind(db).insert(**row).execute()
    return ident


def test_migration_0007_makes_existing_custom_domains_pending(settings, monkeypatch):
    db, tier, restore = _old_schema(settings, monkeypatch, 7)
    ids = [_old_row(tier, "with", DOMAIN), _old_row(tier, "without", None)]
    assert restore()[0] == 7
    assert [Deployment.get_by_id(i).custom_domain_status for i in ids] == ["pending", None]
    db.close()


def test_migrations_0014_0015_give_existing_claims_a_token_an_expiry_clock_and_their_approval(settings, monkeypatch):
    db, tier, restore = _old_schema(settings, monkeypatch, 14)
    now = utcnow()
    ids = {
        "active": _old_row(tier, "act", "act.example.com", custom_domain_status="active"),
        "pending": _old_row(tier, "pen", "pen.example.com", custom_domain_status="pending"),
        "misconfigured": _old_row(tier, "mis", "mis.example.com", custom_domain_status="misconfigured"),
        "released": _old_row(tier, "rel", "rel.example.com", custom_domain_status="pending", released_at=now),
        "none": _old_row(tier, "non", None),
    }
    assert restore()[:5] == [14, 15, 16, 17, 18]  # and any later
    rows = {k: Deployment.get_by_id(i) for k, i in ids.items()}
    tokens = [rows[k].custom_domain_token for k in ("active", "pending", "misconfigured")]
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in tokens) and len(set(tokens)) == 3
    assert rows["released"].custom_domain_token is None and rows["none"].custom_domain_token is None
    # Naive UTC, like every stored time: the expiry of existing unverified claims starts now.
    for k in ("pending", "misconfigured"):
        assert abs(rows[k].custom_domain_unverified_since - now) < dt.timedelta(minutes=1), k
    assert rows["active"].custom_domain_unverified_since is None
    assert abs(rows["active"].custom_domain_approved_at - now) < dt.timedelta(minutes=1)
    assert rows["pending"].custom_domain_approved_at is None
    db.close()


def test_migration_0017_keeps_queued_converges_ordinary(settings, monkeypatch):
    import peewee
    from buddo_deploy import jobqueue

    db, tier, restore = _old_schema(settings, monkeypatch, 17)
    ident = _old_row(tier, "old", None)
    now = utcnow()
    job = 1  # a row of that schema (the model writes the new column too)
    peewee.Table("jobs").bind(db).insert(id=job, action="converge", lock_key="h/", state="queued", timeout_s=60,
                                         run_after=now, created_at=now, updated_at=now, host="h").execute()
    JobTarget.insert(job=job, deployment=ident, generation=1, state="queued").execute()
    assert restore()[:2] == [17, 18]
    assert Job.get_by_id(job).solo is False
    with db.atomic():  # a change on its host joins it, as before
        assert jobqueue.enqueue_converge(Deployment.get_by_id(ident), timeout_s=60).id == job
    db.close()


def test_migration_0018_keeps_a_restart_that_has_yet_to_pull(settings, monkeypatch):
    db, tier, restore = _old_schema(settings, monkeypatch, 18)
    waiting = _old_row(tier, "waiting", None, revision=3, observed_revision=2, pull_image=True)
    done = _old_row(tier, "done", None, revision=3, observed_revision=3, pull_image=False)
    assert restore()[0] == 18
    assert state.desired_item(Deployment.get_by_id(waiting))["pull"] == "always"
    assert state.desired_item(Deployment.get_by_id(done))["pull"] == "missing"
    db.close()
