from __future__ import annotations

from buddo_deploy.models import Tier
from buddo_deploy.services.tiers import sync_tiers
from buddo_deploy.settings import Settings

from tests.helpers import auth

FIELDS = {
    "id", "name", "slug", "payment_method", "monthly_cost_points", "monthly_cost_sats", "memory_limit_mb",
    "cpu_limit_millicores", "custom_domain_allowed", "monthly_stipend_points", "ad_reach_multiplier",
    "max_deployments",
}


def test_tiers_lists_the_catalogue(client):
    resp = client.simulate_get("/api/deploy/tiers", headers=auth())
    assert resp.status_code == 200
    tiers = {tier["slug"]: tier for tier in resp.json}
    assert {"buddo-starter", "buddo-pro", "btc-starter", "btc-pro"} <= set(tiers)
    for tier in tiers.values():
        assert set(tier) == FIELDS
    starter, btc = tiers["buddo-starter"], tiers["btc-starter"]
    assert starter["payment_method"] == "buddo_points" and starter["monthly_cost_sats"] is None
    assert btc["payment_method"] == "bitcoin" and btc["monthly_cost_points"] is None
    assert btc["custom_domain_allowed"] and not starter["custom_domain_allowed"]
    assert btc["memory_limit_mb"] > starter["memory_limit_mb"]
    assert btc["monthly_stipend_points"] > starter["monthly_stipend_points"]
    assert btc["ad_reach_multiplier"] > starter["ad_reach_multiplier"]


def test_tier_sync_is_idempotent(client, settings: Settings):
    before = [(t.id, t.slug) for t in Tier.select().order_by(Tier.slug)]
    assert sync_tiers(settings.tiers_file) == 0
    assert [(t.id, t.slug) for t in Tier.select().order_by(Tier.slug)] == before


def test_tiers_need_a_token(client):
    resp = client.simulate_get("/api/deploy/tiers")
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
