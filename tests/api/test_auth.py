from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from buddo_deploy.domain_errors import Unauthenticated
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import AUDIENCE, ISSUER, JWT_SECRET, auth, create_body, free_port, token


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


@pytest.mark.parametrize(("claims", "status"), [
    ({}, 200),
    ({"aud": "billing-service"}, 401),  # minted for another service
    ({"aud": ["billing-service", "other"]}, 401),
    ({"aud": [AUDIENCE, "billing-service"]}, 200),  # one of its audiences is this API
    ({"aud": None}, 401),
    ({"aud": ""}, 401),
    ({"iss": "https://evil.example"}, 401),
    ({"iss": None}, 401),
    ({"iss": [ISSUER]}, 401),
    ({"iss": {"url": ISSUER}}, 401),
    ({"aud": {"name": AUDIENCE}}, 401),
], ids=["right", "other-aud", "other-auds", "aud-among", "no-aud", "empty-aud", "other-iss", "no-iss", "iss-list",
        "iss-object", "aud-object"])
def test_audience_and_issuer_are_always_checked(client, claims, status):
    resp = get(client, {"Authorization": f"Bearer {_hs256(claims)}"})
    assert resp.status_code == status, resp.text
    if status == 401:
        assert resp.json["error"]["code"] == "invalid_token"


def _hs256(claims: dict[str, Any]) -> str:
    """Signed by hand: PyJWT refuses to encode some of the shapes a forger may send."""
    body = {"sub": "op", "exp": 9999999999, "scope": "deploy:manage", "aud": AUDIENCE, "iss": ISSUER} | claims
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({k: v for k, v in body.items() if v is not None})}"
    return f"{signing_input}.{_b64(hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())}"


def test_none_turns_a_check_off_explicitly(client_with):
    client = client_with(jwt_audience=None, jwt_issuer=None)
    assert get(client, auth(aud=None, iss=None)).status_code == 200
    assert get(client, auth(aud="anything", iss="anyone")).status_code == 200


def test_the_embedded_default_mints_and_expects_its_own_audience_and_issuer(tmp_path):
    from buddo_deploy.auth import TokenVerifier, mint_token
    from buddo_deploy.settings import EMBEDDED_AUDIENCE, EMBEDDED_ISSUER, Settings

    embedded = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)})
    assert (embedded.jwt_audience, embedded.jwt_issuer) == (EMBEDDED_AUDIENCE, EMBEDDED_ISSUER)
    minted = mint_token(embedded, "me")
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert (claims["aud"], claims["iss"]) == (EMBEDDED_AUDIENCE, EMBEDDED_ISSUER)
    verifier = TokenVerifier(embedded)
    assert verifier.verify(minted).operator_id == "me"
    other = jwt.encode(claims | {"aud": "billing-service"}, embedded.jwt_secret, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        verifier.verify(other)


# --- a JWKS (production): RS256 and ES256 keys served over HTTP from this machine --------------------


@dataclass
class Jwks:
    url: str
    rsa: Any  # kid "rsa-1", alg RS256 in the JWK
    ec: Any  # kid "ec-1", no alg in the JWK: ES256 by its curve
    served: list[str]

    def token(self, key: Any = None, alg: str = "RS256", kid: str | None = "rsa-1", **claims: Any) -> str:
        body = {"sub": "op", "exp": 9999999999, "scope": "deploy:manage", "aud": AUDIENCE, "iss": ISSUER} | claims
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key if key is not None else self.rsa,
                          algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())) | {"kid": "rsa-1", "use": "sig",
                                                                                       "alg": "RS256"},
            json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())) | {"kid": "ec-1", "use": "sig"}]
    body = json.dumps({"keys": keys}).encode()
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Jwks(f"http://127.0.0.1:{server.server_port}/jwks.json", rsa_key, ec_key, served)
    finally:
        server.shutdown()


@pytest.fixture
def jwks_client(client_with, jwks):
    def build(algorithms: tuple[str, ...] = ("RS256", "ES256")) -> Any:
        return client_with(jwt_jwks_url=jwks.url, jwt_algorithms=algorithms, rate_limits_enabled=False)

    return build


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _forged(jwks: Jwks, header: Any, payload: Any = None, signature: str = "c2ln") -> str:
    claims = {"sub": "op", "exp": 9999999999, "scope": "deploy:manage", "aud": AUDIENCE, "iss": ISSUER}
    return f"{_b64(header)}.{_b64(claims if payload is None else payload)}.{signature}"


def test_jwks_tokens_of_either_key_are_accepted(jwks_client, jwks):
    client = jwks_client()
    assert get(client, {"Authorization": f"Bearer {jwks.token()}"}).status_code == 200
    assert get(client, {"Authorization": f"Bearer {jwks.token(jwks.ec, 'ES256', 'ec-1')}"}).status_code == 200


def _public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


BAD_JWKS_TOKENS: dict[str, Callable[[Jwks], str]] = {
    "hs256-kid": lambda j: jwt.encode({"sub": "op", "exp": 9999999999}, JWT_SECRET, algorithm="HS256",
                                      headers={"kid": "rsa-1"}),
    "hs256-no-kid": lambda j: jwt.encode({"sub": "op", "exp": 9999999999}, JWT_SECRET, algorithm="HS256"),
    # The classic confusion: HMAC "signed" with the public key everyone can fetch.
    "hs256-public-pem": lambda j: _forged(j, {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, signature=_b64(
        hmac.new(_public_pem(j.rsa), (_forged(j, {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"})
                                      .rsplit(".", 1)[0]).encode(), hashlib.sha256).digest())),
    "alg-none": lambda j: _forged(j, {"alg": "none", "kid": "rsa-1"}, signature=""),
    "no-alg": lambda j: _forged(j, {"kid": "rsa-1"}),
    "alg-number": lambda j: _forged(j, {"alg": 256, "kid": "rsa-1"}),
    "alg-list": lambda j: _forged(j, {"alg": ["RS256"], "kid": "rsa-1"}),
    "no-kid": lambda j: j.token(kid=None),
    "unknown-kid": lambda j: j.token(kid="rotated-away"),
    "kid-number": lambda j: _forged(j, {"alg": "RS256", "kid": 1}),
    "kid-list": lambda j: _forged(j, {"alg": "RS256", "kid": ["rsa-1"]}),
    "kid-of-the-other-key": lambda j: j.token(j.ec, "ES256", "rsa-1"),
    "ec-key-as-rs256": lambda j: j.token(j.rsa, "RS256", "ec-1"),
    "ps256-on-an-rs256-key": lambda j: j.token(j.rsa, "PS256", "rsa-1"),
    "es384-not-configured": lambda j: j.token(ec.generate_private_key(ec.SECP384R1()), "ES384", "ec-1"),
    "forged-signature": lambda j: j.token(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "header-not-json": lambda j: f"{_b64(b'{not json')}.{_b64({'sub': 'op'})}.c2ln",
    "header-a-list": lambda j: _forged(j, ["RS256"]),
    "header-a-string": lambda j: _forged(j, "RS256"),
    "header-not-base64": lambda j: "!!!." + _b64({"sub": "op"}) + ".c2ln",
    "payload-a-list": lambda j: j.token().split(".")[0] + "." + _b64([1]) + "." + j.token().split(".")[2],
    "two-parts": lambda j: ".".join(j.token().split(".")[:2]),
    "four-parts": lambda j: j.token() + ".x",
    "empty-parts": lambda j: "..",
    "non-ascii": lambda j: j.token()[:-4] + "\u00e9\u00e9\u00e9\u00e9",
    "huge": lambda j: _forged(j, {"alg": "RS256", "kid": "rsa-1", "pad": "x" * 60_000}),
    "exp-string": lambda j: j.token(exp="tomorrow"),
    "other-audience": lambda j: j.token(aud="billing-service"),
    "no-audience": lambda j: j.token(aud=None),
    "other-issuer": lambda j: j.token(iss="https://evil.example"),
    "no-issuer": lambda j: j.token(iss=None),
}


@pytest.mark.parametrize("make", list(BAD_JWKS_TOKENS.values()), ids=list(BAD_JWKS_TOKENS))
def test_every_bad_token_is_401_invalid_token_with_a_jwks(jwks_client, jwks, make):
    # Also with HS256 allowed beside (the settings refuse that; the verifier must not need them to).
    for algorithms in (("RS256", "ES256"), ("RS256", "ES256", "HS256")):
        resp = get(jwks_client(algorithms), {"Authorization": f"Bearer {make(jwks)}"})
        assert resp.status_code == 401, (algorithms, resp.text)
        assert resp.json["error"]["code"] == "invalid_token"
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_a_huge_exp_is_no_500(jwks_client, jwks, client):
    assert get(jwks_client(), {"Authorization": f"Bearer {jwks.token(exp=10**400)}"}).status_code == 200
    assert get(client, {"Authorization": f"Bearer {_hs256({'exp': 10**400})}"}).status_code == 200
    assert get(client, {"Authorization": f"Bearer {_hs256({'exp': 1e308})}"}).status_code == 200


BAD_HS256_TOKENS = {
    "exp-string": {"exp": "tomorrow"}, "exp-list": {"exp": [1]}, "exp-bool": {"exp": True}, "exp-null": {"exp": None},
    "exp-past": {"exp": 1}, "sub-number": {"sub": 5}, "sub-empty": {"sub": ""}, "sub-object": {"sub": {"a": 1}},
    "nbf-future": {"nbf": 10**12}, "iat-string": {"iat": "now"},
}


@pytest.mark.parametrize("claims", list(BAD_HS256_TOKENS.values()), ids=list(BAD_HS256_TOKENS))
def test_every_bad_claim_is_401_invalid_token(client, claims):
    resp = get(client, {"Authorization": f"Bearer {_hs256(claims)}"})
    assert resp.status_code == 401, resp.text
    assert resp.json["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("header", [
    {"alg": "none"}, {"alg": "HS512"}, {"alg": "RS256"}, {"alg": 1}, {}, ["HS256"], "HS256", None,
], ids=["none", "hs512-not-configured", "rs256", "alg-number", "no-alg", "list", "string", "null"])
def test_every_bad_header_is_401_invalid_token(client, header):
    body = {"sub": "op", "exp": 9999999999, "scope": "deploy:manage", "aud": AUDIENCE, "iss": ISSUER}
    signing_input = f"{_b64(header)}.{_b64(body)}"
    signature = _b64(hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    resp = get(client, {"Authorization": f"Bearer {signing_input}.{signature}"})
    assert resp.status_code == 401, resp.text
    assert resp.json["error"]["code"] == "invalid_token"


def test_unknown_kids_do_not_make_the_api_fetch_the_jwks_each_time(jwks_client, jwks):
    client = jwks_client()
    assert get(client, {"Authorization": f"Bearer {jwks.token()}"}).status_code == 200
    before = len(jwks.served)
    for i in range(20):
        assert get(client, {"Authorization": f"Bearer {jwks.token(kid=f'made-up-{i}')}"}).status_code == 401
    assert len(jwks.served) - before <= 1  # one refresh at most, then a cooldown


def test_an_unreachable_jwks_is_401_not_500(client_with):
    client = client_with(jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json", jwt_algorithms=("RS256",))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    resp = get(client, {"Authorization": f"Bearer {jwt.encode({'sub': 'op'}, key, 'RS256', {'kid': 'k'})}"})
    assert resp.status_code == 401 and resp.json["error"]["code"] == "invalid_token"


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
        "/api/deploy/webhooks", "/api/deploy/webhooks/{webhook_id}", "/api/deploy/webhooks/{webhook_id}/deliveries",
        "/api/deploy/apps/{deployment_id}/runs", "/api/deploy/apps/{deployment_id}/runs/{run_id}",
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
