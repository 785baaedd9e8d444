from __future__ import annotations

import threading

from tests.helpers import auth, create_body


def test_write_limit_per_endpoint_and_caller(client_with):
    client = client_with(rate_limit_write=2, rate_limit_read=3, rate_limit_window_s=86400)
    for i in range(2):
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"a{i}", tier="btc-pro"),
                                    headers=auth())
        assert resp.status_code == 201
        assert resp.headers["RateLimit-Limit"] == "2"
        assert resp.headers["RateLimit-Remaining"] == str(1 - i)
    limited = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="a9"), headers=auth())
    assert limited.status_code == 429
    assert limited.json["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Remaining"] == "0"
    # Another caller and another endpoint have their own budgets.
    assert client.simulate_post("/api/deploy/apps", json=create_body(subdomain="b1"),
                                headers=auth("operator-2")).status_code == 201
    for _ in range(3):
        assert client.simulate_get("/api/deploy/apps", headers=auth()).status_code == 200
    assert client.simulate_get("/api/deploy/apps", headers=auth()).status_code == 429
    assert client.simulate_get("/api/deploy/tiers", headers=auth()).status_code == 200


def test_limits_are_per_route_not_per_url(client_with):
    """Status polls of two deployments share one budget: the contract limits the endpoint."""
    client = client_with(rate_limit_read=2, rate_limit_window_s=86400)
    ids = [client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"s{i}"), headers=auth())
           .json["deployment"]["id"] for i in range(2)]
    assert client.simulate_get(f"/api/deploy/apps/{ids[0]}/status", headers=auth()).status_code == 200
    assert client.simulate_get(f"/api/deploy/apps/{ids[1]}/status", headers=auth()).status_code == 200
    assert client.simulate_get(f"/api/deploy/apps/{ids[0]}/status", headers=auth()).status_code == 429
    assert client.simulate_get(f"/api/deploy/apps/{ids[0]}", headers=auth()).status_code == 200


def test_contract_defaults(client):
    resp = client.simulate_get("/api/deploy/tiers", headers=auth())
    assert resp.headers["RateLimit-Limit"] == "30"
    resp = client.simulate_post("/api/deploy/apps", json=create_body(), headers=auth())
    assert resp.headers["RateLimit-Limit"] == "10"


def test_budget_comes_back_in_the_next_window(client_with):
    import time

    client = client_with(rate_limit_read=1, rate_limit_window_s=2)
    first = client.simulate_get("/api/deploy/tiers", headers=auth())
    if first.headers["RateLimit-Reset"] == "1":  # too close to the boundary: start in a fresh window
        time.sleep(1.1)
        first = client.simulate_get("/api/deploy/tiers", headers=auth())
    assert first.status_code == 200
    limited = client.simulate_get("/api/deploy/tiers", headers=auth())
    assert limited.status_code == 429
    time.sleep(int(limited.headers["Retry-After"]) + 0.05)
    assert client.simulate_get("/api/deploy/tiers", headers=auth()).status_code == 200


def test_unauthenticated_requests_are_limited_per_client_address(client_with):
    client = client_with(rate_limit_anonymous=3, rate_limit_window_s=86400)
    bad = {"Authorization": "Bearer not-a-token"}
    for i, headers in enumerate([{}, bad, auth(scope="other:scope")]):
        resp = client.simulate_get("/api/deploy/apps", headers=headers)
        assert resp.status_code in (401, 403)
        assert resp.headers["RateLimit-Limit"] == "3" and resp.headers["RateLimit-Remaining"] == str(2 - i)
    for path in ("/api/deploy/apps", "/api/deploy/tiers"):  # one budget for every endpoint
        limited = client.simulate_get(path, headers=bad)
        assert limited.status_code == 429
        assert limited.json["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1 and limited.headers["RateLimit-Remaining"] == "0"
    # Another address has its own budget; a valid token from the flooding address still works.
    assert client.simulate_get("/api/deploy/apps", headers=bad, remote_addr="10.0.0.2").status_code == 401
    assert client.simulate_get("/api/deploy/apps", headers=auth()).status_code == 200
    # The open endpoints are not counted.
    assert client.simulate_get("/api/deploy/openapi.json").status_code == 200


def test_forwarded_for_counts_only_behind_a_trusted_proxy(client_with):
    bad = {"Authorization": "Bearer not-a-token"}

    def status(client, forwarded: str) -> int:
        return client.simulate_get("/api/deploy/apps", headers=bad | {"X-Forwarded-For": forwarded},
                                   remote_addr="10.0.0.1").status_code

    direct = client_with(rate_limit_anonymous=1, rate_limit_window_s=86400)
    # Not a trusted proxy: the client cannot escape its budget by making up addresses.
    assert [status(direct, f"192.0.2.{i}") for i in range(3)] == [401, 429, 429]

    proxied = client_with(rate_limit_anonymous=1, rate_limit_window_s=86400, trusted_proxies=("10.0.0.1",))
    assert status(proxied, "192.0.2.50") == 401
    assert status(proxied, "192.0.2.51") == 401  # another client behind the proxy
    # What a client writes left of the address the proxy appended is not believed.
    assert status(proxied, "203.0.113.9, 192.0.2.50") == 429


def test_expensive_reads_in_flight_are_capped_per_operator(client_with, monkeypatch):
    """Two audit-log reads of one operator hang: a third expensive read of theirs is 429 at once,
    anyone else's and their cheap reads are served, and the slots come back when they end."""
    from buddo_deploy.models import database_proxy
    from buddo_deploy.services.lifecycle import Lifecycle

    client = client_with(operator_concurrency=2)
    ident = client.simulate_post("/api/deploy/apps", json=create_body(), headers=auth()).json["deployment"]["id"]
    other = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="other"),
                                 headers=auth("operator-2")).json["deployment"]["id"]
    release, entered = threading.Event(), threading.Semaphore(0)
    real = Lifecycle.audit_log

    def slow_audit_log(self, principal, *args, **kwargs):
        if principal.operator_id == "operator-1" and not release.is_set():
            entered.release()
            release.wait(30)
        return real(self, principal, *args, **kwargs)

    monkeypatch.setattr(Lifecycle, "audit_log", slow_audit_log)
    codes: list[int] = []

    def read_logs() -> None:
        try:
            codes.append(client.simulate_get(f"/api/deploy/apps/{ident}/logs", headers=auth()).status_code)
        finally:
            database_proxy.obj.close()  # this thread's connection

    hanging = [threading.Thread(target=read_logs) for _ in range(2)]
    for thread in hanging:
        thread.start()
    try:
        for _ in hanging:
            assert entered.acquire(timeout=30)
        capped = client.simulate_get(f"/api/deploy/apps/{ident}/releases", headers=auth())
        assert capped.status_code == 429 and capped.json["error"]["code"] == "too_many_in_flight"
        assert capped.headers["Retry-After"] == "1" and capped.json["error"]["details"]["retry_after"] == 1
        assert client.simulate_get(f"/api/deploy/apps/{ident}/status", headers=auth()).status_code == 200
        assert client.simulate_get(f"/api/deploy/apps/{other}/logs", headers=auth("operator-2")).status_code == 200
    finally:
        release.set()
        for thread in hanging:
            thread.join()
    assert codes == [200, 200]
    # Slots come back, whatever the answer was (here a 404).
    missing = "00000000-0000-0000-0000-000000000000"
    for _ in range(3):
        assert client.simulate_get(f"/api/deploy/apps/{missing}/logs", headers=auth()).status_code == 404
    assert client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth()).status_code == 202
