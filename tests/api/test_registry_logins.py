"""Registry logins: write-only passwords, one per operator and registry host, never another's."""

from __future__ import annotations

import json
import logging
import re
import threading

import pytest
from buddo_deploy.models import RegistryLogin, database_proxy
from buddo_deploy.resources.openapi import build_document
from buddo_deploy.schemas import ValidationContext
from buddo_deploy.services.registry_logins import registry_login_for

from tests.helpers import auth

PASSWORD = "s3cret-Pa55word!"
LOCAL = "127.0.0.1:5000"
REGISTRIES = ("harbor.buddo.xyz:4443/", "docker.io/library/", "ghcr.io/", f"{LOCAL}/")
BASE = "/api/deploy/registry-logins"
# BUDDO_SECRET_KEY of tests.helpers.make_settings.
KEY = "test-encryption-passphrase"


@pytest.fixture
def client(client_with):
    return client_with(allowed_registries=REGISTRIES)


def put(client, registry, body=None, operator="operator-1"):
    body = {"username": "me", "password": PASSWORD} if body is None else body
    return client.simulate_put(f"{BASE}/{registry}", json=body, headers=auth(operator))


def listing(client, operator="operator-1"):
    resp = client.simulate_get(BASE, headers=auth(operator))
    assert resp.status_code == 200, resp.text
    return resp.json["registry_logins"]


def assert_error(resp, status, code, field=None):
    assert resp.status_code == status, resp.text
    error = resp.json["error"]
    assert error["code"] == code
    assert error["request_id"] == resp.headers["X-Request-Id"]
    if field is not None:
        assert [d["field"] for d in error["details"]][0] == field
    assert PASSWORD not in resp.text


def test_create_replace_list_delete(client):
    created = put(client, "ghcr.io")
    assert created.status_code == 201, created.text
    login = created.json["registry_login"]
    assert set(login) == {"registry", "username", "inserted_at", "updated_at"}
    assert (login["registry"], login["username"]) == ("ghcr.io", "me")
    assert login["inserted_at"].endswith("Z") and login["updated_at"].endswith("Z")
    assert created.headers["Location"] == f"{BASE}/ghcr.io"

    replaced = put(client, "ghcr.io", {"username": "robot$ci", "password": "other-token"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json["registry_login"]["username"] == "robot$ci"
    assert replaced.json["registry_login"]["inserted_at"] == login["inserted_at"]
    assert RegistryLogin.select().count() == 1

    assert put(client, LOCAL).status_code == 201
    assert put(client, "docker.io").status_code == 201
    assert [entry["registry"] for entry in listing(client)] == [LOCAL, "docker.io", "ghcr.io"]

    removed = client.simulate_delete(f"{BASE}/ghcr.io", headers=auth())
    assert removed.status_code == 200, removed.text
    assert removed.json == {"message": "Registry login removed", "registry": "ghcr.io"}
    assert [entry["registry"] for entry in listing(client)] == [LOCAL, "docker.io"]
    assert_error(client.simulate_delete(f"{BASE}/ghcr.io", headers=auth()), 404, "not_found")


def test_the_registry_is_case_insensitive_and_stored_lowercase(client):
    assert put(client, "GHCR.io").json["registry_login"]["registry"] == "ghcr.io"
    assert put(client, "ghcr.IO").status_code == 200
    assert put(client, "Harbor.Buddo.XYZ:4443").json["registry_login"]["registry"] == "harbor.buddo.xyz:4443"
    assert [row.registry for row in RegistryLogin.select().order_by(RegistryLogin.registry)] == [
        "ghcr.io", "harbor.buddo.xyz:4443"]
    removed = client.simulate_delete(f"{BASE}/GhCr.Io", headers=auth())
    assert removed.json["registry"] == "ghcr.io"


def test_another_operator_neither_sees_nor_removes_mine(client):
    assert put(client, "ghcr.io").status_code == 201
    assert listing(client, "operator-2") == []
    assert_error(client.simulate_delete(f"{BASE}/ghcr.io", headers=auth("operator-2")), 404, "not_found")
    # Its own login for the same registry is its own row; mine is untouched.
    theirs = put(client, "ghcr.io", {"username": "them", "password": "their-token"}, operator="operator-2")
    assert theirs.status_code == 201
    assert [e["username"] for e in listing(client)] == ["me"]
    assert [e["username"] for e in listing(client, "operator-2")] == ["them"]
    assert client.simulate_delete(f"{BASE}/ghcr.io", headers=auth("operator-2")).status_code == 200
    assert [e["username"] for e in listing(client)] == ["me"]


def test_the_password_is_write_only_and_encrypted(client, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = [put(client, "ghcr.io").text, put(client, "ghcr.io").text, client.simulate_get(BASE, headers=auth()).text,
              client.simulate_delete(f"{BASE}/ghcr.io", headers=auth()).text]
    assert put(client, "ghcr.io").status_code == 201
    assert all(PASSWORD not in body for body in bodies)
    assert PASSWORD not in caplog.text
    rows = database_proxy.obj.execute_sql("SELECT * FROM registry_logins").fetchall()
    assert len(rows) == 1 and PASSWORD not in json.dumps([[str(v) for v in row] for row in rows])
    assert registry_login_for("operator-1", "ghcr.io/me/app:1", KEY)["password"] == PASSWORD


def test_concurrent_puts_create_one_login(client_with):
    client = client_with(allowed_registries=REGISTRIES, rate_limit_write=100)
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        statuses.append(put(client, "ghcr.io", {"username": f"u{i}", "password": PASSWORD}).status_code)
        database_proxy.obj.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 7 + [201]
    assert RegistryLogin.select().count() == 1


def test_a_put_that_loses_the_create_race_replaces_the_winner(client, monkeypatch):
    """The row appears between the put's read and its insert: the unique index refuses the
    insert, and the put replaces what the other one created, in the same transaction."""
    from buddo_deploy.services import registry_logins

    assert put(client, "ghcr.io", {"username": "first", "password": "first-pw"}).status_code == 201
    real = registry_logins._locked
    calls: list[int] = []

    def late(operator_id: str, registry: str) -> RegistryLogin | None:
        calls.append(1)
        return None if len(calls) == 1 else real(operator_id, registry)

    monkeypatch.setattr(registry_logins, "_locked", late)
    resp = put(client, "ghcr.io", {"username": "second", "password": "second-pw"})
    assert resp.status_code == 200, resp.text
    assert len(calls) == 2 and RegistryLogin.select().count() == 1
    assert registry_login_for("operator-1", "ghcr.io/x", KEY)["username"] == "second"


def test_requests_need_a_token(client):
    assert client.simulate_get(BASE).status_code == 401
    assert client.simulate_put(f"{BASE}/ghcr.io", json={"username": "me", "password": PASSWORD}).status_code == 401
    assert client.simulate_delete(f"{BASE}/ghcr.io").status_code == 401
    assert RegistryLogin.select().count() == 0


@pytest.mark.parametrize(
    "registry",
    ["quay.io", "ghcr.io.evil.com", "evil.com:443", "127.0.0.1:5001", "127.0.0.1", "harbor.buddo.xyz",
     "docker.io:443", "g hcr.io", "-ghcr.io", "ghcr.io:", "ghcr..io!", "%00", "a" * 300, "ghcr.io\n",
     "ghcr\u0131.io", "\u212aey.io"],
)
def test_unknown_or_malformed_registry_is_422(client, registry):
    assert_error(put(client, registry), 422, "validation_failed", "registry")
    assert_error(client.simulate_delete(f"{BASE}/{registry}", headers=auth()), 422, "validation_failed", "registry")
    assert RegistryLogin.select().count() == 0


def test_the_422_names_the_allowed_registries(client):
    message = put(client, "quay.io").json["error"]["details"][0]["message"]
    assert message == f"registry not allowed; must be one of: harbor.buddo.xyz:4443, docker.io, ghcr.io, {LOCAL}"
    assert "not a registry host" in put(client, "bad host").json["error"]["details"][0]["message"]


def test_a_registry_with_a_slash_is_no_route(client):
    # The host is the text before the first "/": "ghcr.io/owner" names no registry login.
    assert_error(put(client, "ghcr.io/owner"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": PASSWORD}, "username"),
        ({"username": "me"}, "password"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "me", "password": ""}, "password"),
        ({"username": "u" * 256, "password": PASSWORD}, "username"),
        ({"username": "me", "password": "p" * 4097}, "password"),
        ({"username": "me\n", "password": PASSWORD}, "username"),
        ({"username": "m\x00e", "password": PASSWORD}, "username"),
        ({"username": "m\x1be", "password": PASSWORD}, "username"),
        ({"username": "m\x85e", "password": PASSWORD}, "username"),
        ({"username": "me:you", "password": PASSWORD}, "username"),
        ({"username": "me", "password": PASSWORD + "\n"}, "password"),
        ({"username": "me", "password": "\n" + PASSWORD}, "password"),
        ({"username": "me", "password": PASSWORD + "\r"}, "password"),
        ({"username": "me", "password": PASSWORD + "\x00"}, "password"),
        ({"username": 1, "password": PASSWORD}, "username"),
        ({"username": "me", "password": None}, "password"),
        ({"username": "me", "password": [PASSWORD]}, "password"),
        ({"username": "me", "password": PASSWORD, "email": "x@example.com"}, "email"),
        ({"username": "me", "password": PASSWORD, "registry": "quay.io"}, "registry"),
    ],
)
def test_bad_bodies_are_422_with_field_details(client, body, field):
    resp = put(client, "ghcr.io", body)
    assert_error(resp, 422, "validation_failed")
    assert field in {d["field"] for d in resp.json["error"]["details"]}
    assert RegistryLogin.select().count() == 0


def test_the_longest_username_and_password_are_fine(client):
    resp = put(client, "ghcr.io", {"username": "u" * 255, "password": "p\t " * 1365 + "p"})
    assert resp.status_code == 201, resp.text
    assert registry_login_for("operator-1", "ghcr.io/x", KEY)["password"] == \
        "p\t " * 1365 + "p"


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"string"', b"null", b"[" * 100_000,
            b'{"username": "me", "password": NaN}'],
)
def test_malformed_bodies_are_400(client, raw):
    resp = client.simulate_put(f"{BASE}/ghcr.io", body=raw, headers={**auth(), "Content-Type": "application/json"})
    assert_error(resp, 400, "malformed_json")


def test_a_lone_surrogate_is_422_not_500(client):
    raw = b'{"username": "me", "password": "ab\\ud800cd"}'
    resp = client.simulate_put(f"{BASE}/ghcr.io", body=raw, headers={**auth(), "Content-Type": "application/json"})
    assert_error(resp, 422, "validation_failed", "password")


def test_oversized_body_is_413(client):
    resp = put(client, "ghcr.io", {"username": "me", "password": "x" * 300_000})
    assert_error(resp, 413, "payload_too_large")


def test_rate_limits(client_with):
    client = client_with(allowed_registries=REGISTRIES, rate_limit_write=2, rate_limit_window_s=86400)
    assert client.simulate_get(BASE, headers=auth()).headers["RateLimit-Limit"] == "30"
    first = put(client, "ghcr.io")
    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
    removed = client.simulate_delete(f"{BASE}/ghcr.io", headers=auth())
    assert (removed.headers["RateLimit-Limit"], removed.headers["RateLimit-Remaining"]) == ("2", "1")
    assert put(client, "ghcr.io").status_code == 201
    limited = put(client, "ghcr.io")
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1


def test_the_default_write_limit(client):
    assert put(client, "ghcr.io").headers["RateLimit-Limit"] == "10"


def test_registry_login_for_picks_the_operators_login_for_the_images_registry(client):
    assert put(client, LOCAL, {"username": "local", "password": "local-pw"}).status_code == 201
    assert put(client, "docker.io", {"username": "hub", "password": "hub-pw"}).status_code == 201
    assert put(client, LOCAL, {"username": "other", "password": "other-pw"}, operator="operator-2").status_code == 201
    assert registry_login_for("operator-1", f"{LOCAL}/x/y:tag", KEY) == {
        "registry": LOCAL, "username": "local", "password": "local-pw"}
    assert registry_login_for("operator-2", f"{LOCAL}/x/y:tag", KEY) == {
        "registry": LOCAL, "username": "other", "password": "other-pw"}
    assert registry_login_for("operator-1", "docker.io/library/nginx", KEY)["username"] == "hub"
    assert registry_login_for("operator-1", f"{LOCAL}/x/y@sha256:" + "a" * 64, KEY)["username"] == "local"
    assert registry_login_for("operator-1", "127.0.0.1:5000/x", KEY)["registry"] == LOCAL
    assert registry_login_for("operator-1", "DOCKER.IO/library/nginx", KEY)["username"] == "hub"
    assert registry_login_for("operator-1", "ghcr.io/x/y:1", KEY) is None
    assert registry_login_for("operator-2", "docker.io/library/nginx", KEY) is None
    assert registry_login_for("operator-3", f"{LOCAL}/x/y:tag", KEY) is None
    assert registry_login_for("operator-1", "nginx", KEY) is None
    assert registry_login_for("operator-1", "127.0.0.1:5000", KEY) is None
    assert registry_login_for("operator-1", "127.0.0.1:5001/x", KEY) is None


def test_registry_login_for_fails_in_one_line_without_the_secret_when_the_key_changed(client):
    assert put(client, LOCAL).status_code == 201
    with pytest.raises(RuntimeError) as raised:
        registry_login_for("operator-1", f"{LOCAL}/x", "another-key")
    message = str(raised.value)
    assert message == f"the registry login for {LOCAL} cannot be decrypted: BUDDO_SECRET_KEY changed?"
    assert PASSWORD not in message


def test_the_openapi_document(client):
    doc = client.simulate_get("/api/deploy/openapi.json").json
    listing_op = doc["paths"][BASE]["get"]
    assert listing_op["operationId"] == "listRegistryLogins"
    item = doc["paths"][f"{BASE}/{{registry}}"]
    assert {"put", "delete", "parameters"} == set(item)
    assert {"200", "201", "400", "413", "422"} <= set(item["put"]["responses"])
    assert {"200", "404", "422"} <= set(item["delete"]["responses"])
    [parameter] = item["parameters"]
    pattern = parameter["schema"]["pattern"]
    for host in ("ghcr.io", "GHCR.IO", "docker.io", LOCAL, "harbor.buddo.xyz:4443"):
        assert re.fullmatch(pattern, host), host
    for host in ("quay.io", "ghcr.io.evil.com", "ghcr.io/x", "127.0.0.1:50000", "docker.io:443"):
        assert not re.fullmatch(pattern, host), host
    schemas = doc["components"]["schemas"]
    body = schemas["RegistryLoginIn"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"username", "password"}
    assert body["properties"]["password"]["writeOnly"] is True
    assert body["properties"]["password"]["maxLength"] == 4096
    assert body["properties"]["username"]["maxLength"] == 255
    assert set(schemas["RegistryLoginOut"]["properties"]) == {"registry", "username", "inserted_at", "updated_at"}


def test_the_path_pattern_has_no_ecma_invalid_escape():
    context = ValidationContext(allowed_registries=("my-registry.example.com:5000/", "ghcr.io/"),
                                reserved_subdomains=(), base_domain="localhost")
    parameter = build_document(context)["paths"][f"{BASE}/{{registry}}"]["parameters"][0]
    assert "\\-" not in parameter["schema"]["pattern"]
    assert context.registry_hosts == ("my-registry.example.com:5000", "ghcr.io")


def test_a_hosts_logins_are_read_in_one_query(client, monkeypatch):
    """A reconcile's registry logins: one query for every operator of the host, and the same
    logins as one lookup each would find."""
    from buddo_deploy.models import Deployment
    from buddo_deploy.services import engine, state

    from tests.helpers import count_statements, create_deployment

    def scope():
        rows = {str(d.id): d for d in Deployment.select()}
        return [state.desired_item(d) for d in rows.values()], rows

    for i in range(6):
        operator = f"op-{i}"
        if i % 2 == 0:
            assert put(client, LOCAL, operator=operator).status_code == 201
        create_deployment(client, operator, subdomain=f"pull-{i}", image=f"{LOCAL}/team/app-{i}:v1")
        if i == 2:
            first, first_rows = scope()
            few = count_statements(monkeypatch, lambda f=first, r=first_rows: engine.registry_auths(f, r, KEY))
    items, rows = scope()
    found = engine.registry_auths(items, rows, KEY)
    assert count_statements(monkeypatch, lambda: engine.registry_auths(items, rows, KEY)) == few == 1
    assert set(found) == {str(d.id) for d in rows.values() if d.operator_id in {"op-0", "op-2", "op-4"}}
    for ident, d in rows.items():
        one = registry_login_for(d.operator_id, d.container_image, KEY)
        assert (one is not None) == (ident in found)
