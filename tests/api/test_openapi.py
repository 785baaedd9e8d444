"""The OpenAPI document carries the constraints the validators enforce (schemathesis relies on it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from buddo_deploy.app import validation_context
from buddo_deploy.resources.openapi import build_document
from buddo_deploy.services.tiers import load_tier_file
from buddo_deploy.vocabulary import DeploymentStatus

from tests.helpers import auth, make_settings


@pytest.fixture
def document(tmp_path: Path) -> dict:
    return build_document(validation_context(make_settings(tmp_path, "sqlite")))


def _create_fields(document: dict) -> dict:
    return document["components"]["schemas"]["DeploymentCreate"]["properties"]


def test_create_request_constraints(document, tmp_path):
    fields = _create_fields(document)
    subdomain = fields["subdomain"]
    assert (subdomain["minLength"], subdomain["maxLength"]) == (1, 32)
    assert re.fullmatch(subdomain["pattern"], "my-app") and not re.fullmatch(subdomain["pattern"], "-app")
    assert {"www", "mail", "autoconfig", "mta-sts", "container-host-1"} <= set(subdomain["not"]["enum"])
    image = fields["image"]
    assert image["maxLength"] == 512
    assert re.fullmatch(image["pattern"], "ghcr.io/owner/app:1.2")
    assert not re.fullmatch(image["pattern"], "quay.io/owner/app:1.2")
    settings = make_settings(tmp_path, "sqlite")
    assert fields["tier"]["enum"] == [t["slug"] for t in load_tier_file(settings.tiers_file)]
    assert (fields["port"]["minimum"], fields["port"]["maximum"]) == (1, 65535)
    domain = next(b for b in fields["custom_domain"]["anyOf"] if b.get("type") == "string")
    assert domain["maxLength"] == 253 and re.search(domain["not"]["pattern"], "app.localhost")
    env = fields["env_vars"]
    assert env["maxProperties"] == 50 and "patternProperties" not in env
    assert env["propertyNames"]["pattern"] == "^(?:[A-Za-z_][A-Za-z0-9_]*)$"
    assert env["propertyNames"]["maxLength"] == 128 and env["additionalProperties"]["maxLength"] == 4096
    assert document["components"]["schemas"]["DeploymentCreate"]["additionalProperties"] is False


def test_the_create_example_is_accepted(client):
    """The document's example (schemathesis' examples phase sends it) passes the validator."""
    example = client.simulate_get("/api/deploy/openapi.json").json["components"]["schemas"]["DeploymentCreate"][
        "examples"][0]
    resp = client.simulate_post("/api/deploy/apps", json=example, headers=auth())
    assert resp.status_code == 201, resp.text


def test_every_pattern_is_anchored_at_both_ends(document):
    patterns: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.append(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["components"])
    walk(document["paths"])
    whole = [p for p in patterns if not p.startswith("(?:^|")]  # the base-domain suffix test is a search
    assert len(whole) >= 7  # subdomain, image, tier, domain, env name and value, cursor
    assert all(p.startswith("^") and p.endswith("$") for p in whole), whole


def test_list_query_parameters(document):
    params = {p["name"]: p for p in document["paths"]["/api/deploy/apps"]["get"]["parameters"]}
    assert set(params) == {"limit", "cursor", "status", "include_destroyed"}
    assert all(p["in"] == "query" and not p["required"] for p in params.values())
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert params["status"]["schema"] == {"type": "string", "enum": [status.value for status in DeploymentStatus]}
    assert params["cursor"]["schema"]["type"] == "string" and params["cursor"]["schema"]["maxLength"] == 200
    assert params["include_destroyed"]["schema"]["type"] == "boolean"


def test_links_from_create_reach_every_per_deployment_operation(document):
    operations = {
        op["operationId"]: (path, method)
        for path, item in document["paths"].items()
        for method, op in item.items() if method != "parameters"
    }
    links = document["paths"]["/api/deploy/apps"]["post"]["responses"]["201"]["links"]
    targets = {operations[link["operationId"]] for link in links.values()}
    # Every operation whose only path parameter is the deployment id (a job also needs its job_id).
    per_deployment = {(path, method) for path, method in operations.values()
                      if "{deployment_id}" in path and path.count("{") == 1}
    assert targets == per_deployment and len(per_deployment) == 12
    assert all(link["parameters"] == {"deployment_id": "$response.body#/deployment/id"} for link in links.values())


def test_every_error_response_is_the_envelope(document):
    for item in document["paths"].values():
        for method, op in item.items():
            if method == "parameters":
                continue
            errors = {code: r for code, r in op["responses"].items() if int(code) >= 400}
            if op.get("security") != []:  # token-protected (not /metrics or the signed webhook)
                assert {"401", "403", "429"} <= set(errors)
            for response in errors.values():
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    create = document["paths"]["/api/deploy/apps"]["post"]["responses"]
    assert {"201", "400", "402", "404", "413", "422", "503"} <= set(create)
