from __future__ import annotations

import json
import re

import pytest
from buddo_deploy.models import AuditEntry, Deployment, Job, JobTarget

from tests.helpers import auth, create_body


def post(client, body, operator="operator-1", **kwargs):
    return client.simulate_post("/api/deploy/apps", json=body, headers=auth(operator, **kwargs))


def test_create_returns_pending_deployment_and_enqueues_deploy(client):
    resp = post(client, create_body(port=8080, env_vars={"NODE_ENV": "production", "DATABASE_URL": "postgres://s3cret"}))
    assert resp.status_code == 201, resp.text
    deployment = resp.json["deployment"]
    assert resp.headers["Location"] == f"/api/deploy/apps/{deployment['id']}"
    assert deployment["status"] == "pending"
    assert deployment["subdomain"] == "my-app"
    assert re.fullmatch(r"my-app-[a-z0-9]{6}", deployment["container_name"])
    assert deployment["container_image"] == "harbor.buddo.xyz:4443/operators/my-app:latest"
    assert deployment["memory_limit_mb"] == 256 and deployment["cpu_limit_millicores"] == 250
    assert deployment["port"] == 8080 and deployment["tier"] == "buddo-starter"
    assert deployment["env_var_names"] == ["DATABASE_URL", "NODE_ENV"]
    assert deployment["app_id"] == "operator-1"
    assert deployment["url"] == "https://my-app.localhost:8443"
    assert deployment["inserted_at"].endswith("Z") and deployment["next_billing_at"].endswith("Z")
    assert "s3cret" not in resp.text

    stored = Deployment.get_by_id(deployment["id"])
    assert "s3cret" not in (stored.env_vars_encrypted or "") and stored.env_vars_encrypted
    actions = [(e.action, e.status, e.initiated_by) for e in AuditEntry.select().order_by(AuditEntry.inserted_at)]
    assert actions == [("create", "completed", "operator-1"), ("deploy", "pending", None)]
    job = Job.get()  # the host's converge, with the deployment as its target
    assert (job.action, job.state, job.host, job.deployment_id) == ("converge", "queued", stored.host, None)
    [target] = JobTarget.select()
    assert (target.job_id, str(target.deployment_id), target.generation, target.state) == (
        job.id, deployment["id"], 1, "queued")
    deploy = AuditEntry.get(AuditEntry.action == "deploy")
    assert (deploy.generation, deploy.job_id) == (1, job.id)


# The contract's Deployment object (seed/deploy-lifecycle.txt), then what the platform adds.
CONTRACT_FIELDS = {"id", "app_id", "deploy_tier_id", "container_name", "container_image", "subdomain", "status",
                   "memory_limit_mb", "cpu_limit_millicores", "inserted_at"}
PLATFORM_FIELDS = {"tier", "url", "custom_domain", "custom_domain_status", "custom_domain_verification", "port",
                   "desired_state", "generation", "observed_generation", "health_status", "last_health_check",
                   "billing_status", "next_billing_at", "env_var_names", "host", "image_digest", "updated_at",
                   "conditions", "health_check"}


def test_the_deployment_object_and_its_conditions(client):
    deployment = post(client, create_body()).json["deployment"]
    assert set(deployment) == CONTRACT_FIELDS | PLATFORM_FIELDS
    conditions = {c["type"]: c for c in deployment["conditions"]}
    assert list(conditions) == ["Ready", "Progressing", "Degraded", "Suspended"]  # no custom domain
    assert {name: (c["status"], c["reason"]) for name, c in conditions.items()} == {
        "Ready": ("False", "Pending"), "Progressing": ("True", "Converging"),
        "Degraded": ("False", "AsExpected"), "Suspended": ("False", "BillingActive")}
    assert all(set(c) == {"type", "status", "reason", "message", "observed_generation"}
               and c["observed_generation"] == 0 for c in conditions.values())


def test_app_id_is_the_client_id(client):
    resp = post(client, create_body(), client_id="client-abc")
    assert resp.status_code == 201
    assert resp.json["deployment"]["app_id"] == "client-abc"


def test_default_port_is_3000(client):
    assert post(client, create_body()).json["deployment"]["port"] == 3000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subdomain", ""),
        ("subdomain", "a" * 33),
        ("subdomain", "My-App"),
        ("subdomain", "-app"),
        ("subdomain", "app-"),
        ("subdomain", "my_app"),
        ("subdomain", "my.app"),
        ("subdomain", "www"),
        ("subdomain", "api"),
        ("subdomain", 12),
        ("image", "quay.io/foo/bar:1"),
        ("image", "docker.io/library/"),
        ("image", "docker.io/library/Nginx"),
        ("image", "ghcr.io/owner/app:bad tag"),
        ("image", "harbor.buddo.xyz:4443/../etc"),
        ("image", "ghcr.io.evil.com/x"),
        ("port", 0),
        ("port", 65536),
        ("port", "80"),
        ("custom_domain", "Example.com"),
        ("custom_domain", "localhost"),
        ("custom_domain", "app.localhost"),
        ("custom_domain", "-bad.example.com"),
        ("custom_domain", "example"),
        ("env_vars", {"1BAD": "x"}),
        ("env_vars", {"GOOD": 1}),
        ("env_vars", {f"K{i}": "v" for i in range(51)}),
        ("env_vars", {"BIG": "x" * 5000}),
        ("env_vars", ["A=b"]),
        # Whole-string matches: Python's `$` also matches before a trailing newline.
        ("subdomain", "admin\n"),
        ("subdomain", "my-app\n"),
        ("image", "harbor.buddo.xyz:4443/operators/my-app:latest\n"),
        ("image", "ghcr.io/owner/app\n"),
        ("custom_domain", "app.example.com\n"),
        ("env_vars", {"GOOD\n": "x"}),
        ("env_vars", {"GOOD": "nul\x00inside"}),
        ("tier", "btc-starter\n"),
        ("port", 80.5),
        ("port", True),
        # Mail and autoconfig names, and the inventory's hosts.
        *(("subdomain", name) for name in ("mail", "smtp", "imap", "pop", "pop3", "autoconfig", "autodiscover",
                                           "mta-sts", "webmail", "container-host-1")),
    ],
)
def test_validation_errors_are_422_with_field_details(client, field, value):
    resp = post(client, create_body(**{"tier": "btc-starter", field: value}))
    assert resp.status_code == 422, resp.text
    error = resp.json["error"]
    assert error["code"] == "validation_failed"
    assert [d["field"] for d in error["details"]][0].split(".")[0] == field
    assert error["request_id"] == resp.headers["X-Request-Id"]
    assert Deployment.select().count() == 0


def test_fifty_env_vars_are_fine(client):
    resp = post(client, create_body(env_vars={f"K{i}": "v" for i in range(50)}))
    assert resp.status_code == 201


def test_missing_fields_and_unknown_fields(client):
    resp = post(client, {"subdomain": "x", "colour": "blue"})
    assert resp.status_code == 422
    fields = {d["field"] for d in resp.json["error"]["details"]}
    assert {"image", "tier", "colour"} <= fields


def test_unknown_tier_is_404(client):
    resp = post(client, create_body(tier="gold"))
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "tier_not_found"


def test_custom_domain_needs_a_tier_that_allows_it(client):
    resp = post(client, create_body(custom_domain="app.example.com"))
    assert resp.status_code == 422
    assert resp.json["error"]["details"][0]["field"] == "custom_domain"
    ok = post(client, create_body(tier="btc-starter", custom_domain="app.example.com"))
    assert ok.status_code == 201
    assert ok.json["deployment"]["custom_domain"] == "app.example.com"
    taken = post(client, create_body(subdomain="other", tier="btc-starter", custom_domain="app.example.com"))
    assert taken.status_code == 422
    assert taken.json["error"]["code"] == "custom_domain_taken"


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"string"', b"null", b"[" * 100_000, b'{"port": NaN}',
            b'{"port": -Infinity}'],
)
def test_malformed_bodies_are_400(client, raw):
    resp = client.simulate_post(
        "/api/deploy/apps", body=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "malformed_json"


def test_oversized_body_is_413(client):
    resp = post(client, create_body(env_vars={"A": "x" * 300_000}))
    assert resp.status_code == 413
    assert resp.json["error"]["code"] == "payload_too_large"


def test_subdomain_taken_then_free_after_destroy(client):
    first = post(client, create_body())
    assert first.status_code == 201
    again = post(client, create_body(), operator="operator-2")
    assert again.status_code == 422
    assert again.json["error"]["code"] == "subdomain_taken"
    destroyed = client.simulate_delete(f"/api/deploy/apps/{first.json['deployment']['id']}", headers=auth())
    assert destroyed.status_code == 200
    reused = post(client, create_body(), operator="operator-2")
    assert reused.status_code == 201


def test_tier_limit_is_429(client):
    for i in range(3):  # buddo-starter allows 3
        assert post(client, create_body(subdomain=f"app-{i}")).status_code == 201
    resp = post(client, create_body(subdomain="app-3"))
    assert resp.status_code == 429
    assert resp.json["error"]["code"] == "tier_deployment_limit"
    assert post(client, create_body(subdomain="app-3", tier="buddo-pro")).status_code == 201


def test_account_limit_is_429(client_with):
    client = client_with(max_deployments_per_account=2)
    assert post(client, create_body(subdomain="a1")).status_code == 201
    assert post(client, create_body(subdomain="a2", tier="buddo-pro")).status_code == 201
    resp = post(client, create_body(subdomain="a3", tier="btc-pro"))
    assert resp.status_code == 429
    assert resp.json["error"]["code"] == "account_deployment_limit"


def test_env_values_are_write_only(client):
    created = post(client, create_body(env_vars={"SECRET": "hunter2"})).json["deployment"]
    shown = client.simulate_get(f"/api/deploy/apps/{created['id']}", headers=auth())
    assert shown.json["deployment"]["env_var_names"] == ["SECRET"]
    assert "hunter2" not in shown.text
    assert "hunter2" not in json.dumps([e.details for e in AuditEntry.select()])


def test_an_integral_json_number_is_a_port(client):
    resp = post(client, create_body(port=8080.0))
    assert resp.status_code == 201 and resp.json["deployment"]["port"] == 8080


def test_values_with_newlines_are_fine(client):
    resp = post(client, create_body(env_vars={"PEM": "line one\nline two\n"}))
    assert resp.status_code == 201, resp.text


def test_the_configured_inventory_hosts_are_reserved(client_with, tmp_path):
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "container_hosts:\n  hosts:\n    edge-9:\n      ansible_host: edge-9.example.net\n"
        "      buddo_host_memory_mb: 1024\n")
    client = client_with(inventory=inventory)
    resp = post(client, create_body(subdomain="edge-9"))
    assert resp.status_code == 422
    assert resp.json["error"]["details"] == [{"field": "subdomain", "message": "'edge-9' is reserved"}]
    # The default inventory's host is not in this one.
    assert post(client, create_body(subdomain="container-host-1")).status_code == 201


def test_pattern_errors_say_what_the_pattern_means(client):
    resp = post(client, create_body(subdomain="My-App", env_vars={"BAD\n": "x", "NUL": "a\x00b"}))
    assert resp.status_code == 422
    assert resp.json["error"]["details"] == [
        {"field": "subdomain",
         "message": "must be lowercase letters, digits and hyphens, not starting or ending with a hyphen"},
        {"field": "env_vars.BAD\n.[key]", "message": "invalid variable name (use [A-Za-z_][A-Za-z0-9_]*)"},
        {"field": "env_vars.NUL", "message": "must not contain NUL"},
    ]
