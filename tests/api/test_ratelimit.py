from __future__ import annotations

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
