from __future__ import annotations

import json
from pathlib import Path

from buddo_deploy.models import Deployment, Tier
from buddo_deploy.services import engine, state
from buddo_deploy.services.tiers import sync_tiers
from buddo_deploy.settings import Settings

from tests.helpers import auth, create_deployment

FIELDS = {
    "id", "name", "slug", "payment_method", "monthly_cost_points", "monthly_cost_sats", "memory_limit_mb",
    "cpu_limit_millicores", "custom_domain_allowed", "monthly_stipend_points", "ad_reach_multiplier",
    "max_deployments", "pids_limit", "log_max_size_mb", "disk_limit_mb",
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
    assert btc["pids_limit"] > starter["pids_limit"] > 0
    assert btc["log_max_size_mb"] > starter["log_max_size_mb"] > 0
    assert btc["disk_limit_mb"] > starter["disk_limit_mb"] > 0


def test_tier_sync_is_idempotent(client, settings: Settings):
    before = [(t.id, t.slug) for t in Tier.select().order_by(Tier.slug)]
    assert sync_tiers(settings.tiers_file) == 0
    assert [(t.id, t.slug) for t in Tier.select().order_by(Tier.slug)] == before


def test_tiers_need_a_token(client):
    resp = client.simulate_get("/api/deploy/tiers")
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")


def test_the_desired_document_carries_the_tiers_current_caps(client, settings: Settings, tmp_path: Path):
    ident = create_deployment(client, tier="buddo-starter")
    item = state.desired_item(Deployment.get_by_id(ident))
    assert (item["pids_limit"], item["log_max_size_mb"]) == (128, 10)

    # A tier whose caps changed: the next document (and so the converge plan) has the new ones.
    tiers = json.loads(settings.tiers_file.read_text())
    for tier in tiers:
        if tier["slug"] == "buddo-starter":
            tier |= {"pids_limit": 200, "log_max_size_mb": 15}
    changed = tmp_path / "tiers.json"
    changed.write_text(json.dumps(tiers))
    assert sync_tiers(changed) == 1
    [item] = [i for i in engine.reconcile_scope(item["host"])[0] if i["id"] == ident]
    assert (item["pids_limit"], item["log_max_size_mb"]) == (200, 15)
    assert state.desired_item(Deployment.get_by_id(ident))["pids_limit"] == 200
