from __future__ import annotations

import pytest

from tests.helpers import JWT_SECRET, auth, create_body, token


def get(client, headers):
    return client.simulate_get("/api/deploy/apps", headers=headers)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_request"),
        ({"Authorization": "Bearer "}, "invalid_request"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid_token"),
        ({"Authorization": f"Bearer {token(secret='some-other-secret-also-long-enough-xx')}"}, "invalid_token"),
        ({"Authorization": f"Bearer {token(expires_in=-3600)}"}, "invalid_token"),
    ],
)
def test_bad_tokens_are_401_with_challenge(client, headers, code):
    resp = get(client, headers)
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == code
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="buddo-deploy"')
    if code != "unauthorized":
        assert f'error="{code}"' in challenge


def test_expired_token_says_so(client):
    resp = get(client, auth(expires_in=-3600))
    assert "expired" in resp.json["error"]["message"]


def test_token_without_exp_or_sub_is_401(client):
    import jwt

    no_exp = jwt.encode({"sub": "x", "scope": "deploy:manage"}, JWT_SECRET, algorithm="HS256")
    no_sub = jwt.encode({"exp": 9999999999, "scope": "deploy:manage"}, JWT_SECRET, algorithm="HS256")
    for raw in (no_exp, no_sub):
        assert get(client, {"Authorization": f"Bearer {raw}"}).status_code == 401


def test_alg_none_is_refused(client):
    import jwt

    unsigned = jwt.encode({"sub": "x", "exp": 9999999999, "scope": "deploy:manage"}, None, algorithm="none")
    assert get(client, {"Authorization": f"Bearer {unsigned}"}).status_code == 401


@pytest.mark.parametrize("scope", [None, "", "deploy:read", "profile deploy"])
def test_missing_scope_is_403_insufficient_scope(client, scope):
    resp = get(client, auth(scope=scope))
    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert 'scope="deploy:manage"' in resp.headers["WWW-Authenticate"]


def test_scope_among_others_and_scp_list(client):
    assert get(client, auth(scope="openid deploy:manage profile")).status_code == 200
    assert get(client, auth(scope=None, scp=["deploy:manage"])).status_code == 200


def test_audience_and_issuer_are_checked_when_configured(client_with):
    client = client_with(jwt_audience="buddo-deploy", jwt_issuer="https://auth.buddo.xyz")
    good = auth(aud="buddo-deploy", iss="https://auth.buddo.xyz")
    assert get(client, good).status_code == 200
    assert get(client, auth(aud="someone-else", iss="https://auth.buddo.xyz")).status_code == 401
    assert get(client, auth(iss="https://auth.buddo.xyz")).status_code == 401
    assert get(client, auth(aud="buddo-deploy", iss="https://evil.example")).status_code == 401


def test_rs256_through_jwks(client_with, tmp_path):
    """Production mode: RS256 keys served as a JWKS document over HTTP."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [jwk | {"kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = client_with(jwt_jwks_url=f"http://127.0.0.1:{server.server_port}/jwks.json",
                             jwt_algorithms=("RS256",), jwt_audience="buddo")
        claims = {"sub": "op", "exp": 9999999999, "scope": "deploy:manage", "aud": "buddo"}
        good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        assert get(client, {"Authorization": f"Bearer {good}"}).status_code == 200
        hs = jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "k1"})
        assert get(client, {"Authorization": f"Bearer {hs}"}).status_code == 401
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"})
        assert get(client, {"Authorization": f"Bearer {forged}"}).status_code == 401
    finally:
        server.shutdown()


def test_create_without_token_is_401_and_creates_nothing(client):
    resp = client.simulate_post("/api/deploy/apps", json=create_body())
    assert resp.status_code == 401
    assert get(client, auth()).json["deployments"] == []


def test_openapi_is_public_and_lists_every_endpoint(client):
    resp = client.simulate_get("/api/deploy/openapi.json")
    assert resp.status_code == 200
    doc = resp.json
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/api/deploy/tiers", "/api/deploy/apps", "/api/deploy/apps/{deployment_id}",
        "/api/deploy/apps/{deployment_id}/status", "/api/deploy/apps/{deployment_id}/logs",
        "/api/deploy/apps/{deployment_id}/restart", "/api/deploy/apps/{deployment_id}/stop",
        "/api/deploy/billing", "/api/deploy/billing/payments",
        "/api/deploy/apps/{deployment_id}/releases", "/api/deploy/apps/{deployment_id}/rollback",
        "/api/deploy/apps/{deployment_id}/output",
        "/api/deploy/apps/{deployment_id}/jobs/{job_id}", "/metrics",
        "/api/deploy/registry-logins", "/api/deploy/registry-logins/{registry}",
    }
    schemas = doc["components"]["schemas"]
    assert {"DeploymentCreate", "DeploymentOut", "StatusOut", "LogEntryOut", "ErrorOut", "TierOut", "JobOut",
            "JobEventOut"} <= set(schemas)
    assert "job_id" in schemas["LogEntryOut"]["properties"]
    assert doc["paths"]["/metrics"]["get"]["security"] == []
    assert set(schemas["StatusOut"]["properties"]) == {"id", "status", "subdomain", "health_status",
                                                      "last_health_check"}


def test_openapi_document_is_valid_openapi_31(client):
    from openapi_spec_validator import validate

    validate(client.simulate_get("/api/deploy/openapi.json").json)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/deploy/tiers"), ("POST", "/api/deploy/apps"), ("GET", "/api/deploy/apps"),
        ("GET", "/api/deploy/apps/{id}"), ("GET", "/api/deploy/apps/{id}/status"),
        ("GET", "/api/deploy/apps/{id}/logs"), ("POST", "/api/deploy/apps/{id}/restart"),
        ("POST", "/api/deploy/apps/{id}/stop"), ("DELETE", "/api/deploy/apps/{id}"),
        ("GET", "/api/deploy/apps/{id}/jobs/1"),
    ],
)
def test_every_contract_endpoint_needs_a_token(client, method, path):
    created = client.simulate_post("/api/deploy/apps", json=create_body(), headers=auth()).json["deployment"]
    resp = client.simulate_request(method, path.format(id=created["id"]), json=create_body(subdomain="other"))
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"
    forbidden = client.simulate_request(method, path.format(id=created["id"]), headers=auth(scope="profile"))
    assert forbidden.status_code == 403
