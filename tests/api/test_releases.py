"""Releases and rollback (issue 10): recorded by the engine service, listed and rolled back through the API."""

from __future__ import annotations

import json

import falcon.testing
import pytest
from buddo_deploy import jobqueue
from buddo_deploy.app import create_app
from buddo_deploy.models import AuditEntry, Deployment, Release, database_proxy
from buddo_deploy.services import state

from tests.helpers import (
    auth,
    converged,
    count_statements,
    create_deployment,
    digest,
    make_settings,
    migrate,
    ran,
    run_job,
)

IMAGE = "docker.io/library/nginx:latest"


def deploy_three(client, settings) -> str:
    """Created (release 1), restarted twice (releases 2 and 3), each a new image behind the tag."""
    ident = create_deployment(client, image=IMAGE)
    run_job(settings, ran(1))
    for n in (2, 3):
        assert client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth()).status_code == 200
        run_job(settings, ran(n))
    return ident


def releases(client, ident, **params):
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/releases", params=params, headers=auth())
    assert resp.status_code == 200, resp.text
    return resp.json


def test_each_deploy_and_restart_records_a_release_newest_first_paginated(client, settings):
    ident = deploy_three(client, settings)
    page = releases(client, ident, limit=2)
    assert [r["number"] for r in page["releases"]] == [3, 2]
    assert page["releases"][0]["image_digest"] == digest(3) and page["releases"][0]["image"] == IMAGE
    assert page["releases"][0]["initiated_by"] == page["releases"][1]["initiated_by"] is not None
    assert page["releases"][0]["kept"] is True and page["releases"][0]["pinned"] is False
    rest = releases(client, ident, limit=2, cursor=page["next_cursor"])
    assert [r["number"] for r in rest["releases"]] == [1] and rest["next_cursor"] is None
    # The audit entry that made a release names it.
    last = AuditEntry.select().where(AuditEntry.deployment == ident).order_by(AuditEntry.inserted_at.desc()).first()
    assert json.loads(last.details)["release"] == 3


def test_a_heal_and_a_failed_restart_record_no_release(client, settings):
    ident = create_deployment(client, image=IMAGE)
    run_job(settings, ran(1))
    d = state.locked(ident)
    state.change(d, "restart", None, timeout_s=60, details={"reason": "health", "message": "x"},
                 revision=d.revision + 1)
    run_job(settings, ran(1))
    client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth())
    run_job(settings, lambda plan: converged(plan, ok=False, kind="app", message="app did not answer"))
    assert [r["number"] for r in releases(client, ident)["releases"]] == [1]


def test_rollback_pins_the_previous_release_digest_and_records_a_release(client, settings):
    ident = deploy_three(client, settings)
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", headers=auth())
    assert resp.status_code == 200, resp.text
    assert resp.json["deployment"]["status"] == "deploying"
    entry = AuditEntry.select().where(AuditEntry.deployment == ident).order_by(AuditEntry.inserted_at.desc()).first()
    assert (entry.action, json.loads(entry.details)["rollback_to"]) == ("deploy", 2)
    _, plan = run_job(settings, ran(2))
    [item] = plan.items
    assert item["image"] == f"docker.io/library/nginx@{digest(2)}" and item["pull"] == "missing"
    assert item["releases"][:3] == [f"docker.io/library/nginx@{d}" for d in (digest(3), digest(2), digest(1))]
    newest = releases(client, ident)["releases"][0]
    assert (newest["number"], newest["image_digest"], newest["pinned"]) == (4, digest(2), True)
    assert newest["rollback_of"] == 2
    assert Deployment.get_by_id(ident).status == "running"
    # A restart runs the tag again (pulled), not the pinned digest.
    client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth())
    _, plan = run_job(settings, ran(5))
    assert plan.items[0]["image"] == IMAGE and plan.items[0]["pull"] == "always"
    # Once that restart converged, its tag is not pulled again (a reconcile's repair keeps the
    # version that runs); the worker wrote observed state only, the restart's desired state stands.
    d = Deployment.get_by_id(ident)
    assert d.observed_revision == d.revision == d.pull_revision
    assert state.desired_item(d)["pull"] == "missing"


def test_a_rollback_that_fails_keeps_the_serving_release_and_its_image(client, settings):
    ident = deploy_three(client, settings)
    before = Deployment.get_by_id(ident)
    client.simulate_post(f"/api/deploy/apps/{ident}/rollback", json={"release": 1}, headers=auth())
    run_job(settings, lambda plan: converged(plan, ok=False, kind="app", message="app did not answer"))
    d = Deployment.get_by_id(ident)
    assert (d.status, d.pinned_digest, d.revision, d.container_image) == ("running", None, before.revision, IMAGE)
    assert state.spec_of(d) == state.spec_of(before)
    assert [r["number"] for r in releases(client, ident)["releases"]] == [3, 2, 1]


@pytest.mark.parametrize(("body", "code"), [
    ({"release": 9}, "release_not_found"),
    ({"release": 0}, "validation_failed"),
    ({"release": "2"}, "validation_failed"),
    ({"release": 2, "extra": 1}, "validation_failed"),
])
def test_bad_rollbacks_are_422_and_change_nothing(client, settings, body, code):
    ident = deploy_three(client, settings)
    generation = Deployment.get_by_id(ident).generation
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", json=body, headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == code, resp.text
    assert Deployment.get_by_id(ident).generation == generation
    assert jobqueue.claim("w", 30) is None


def test_rollback_to_a_release_whose_image_was_pruned_is_422(tmp_path, backend):
    settings = make_settings(tmp_path, backend, releases_kept=2)
    migrate(settings)
    client = falcon.testing.TestClient(create_app(settings))
    try:
        ident = deploy_three(client, settings)
        assert [r["kept"] for r in releases(client, ident)["releases"]] == [True, True, False]
        resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", json={"release": 1}, headers=auth())
        assert resp.status_code == 422 and resp.json["error"]["code"] == "release_image_pruned", resp.text
        assert "no longer kept" in resp.json["error"]["message"]
        assert jobqueue.claim("w", 30) is None
    finally:
        database_proxy.obj.close()


def test_rollback_without_a_previous_release_is_422(client, settings):
    ident = create_deployment(client, image=IMAGE)
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "no_previous_release"
    run_job(settings, ran(1))
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "no_previous_release"


def test_another_operator_gets_403_and_a_destroyed_deployment_422(client, settings):
    ident = deploy_three(client, settings)
    for method, suffix in (("GET", "releases"), ("POST", "rollback")):
        resp = client.simulate_request(method, f"/api/deploy/apps/{ident}/{suffix}", headers=auth("operator-2"))
        assert resp.status_code == 403, resp.text
    client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth())
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", json={"release": 2}, headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "deployment_destroyed"
    assert Release.select().where(Release.deployment == ident).count() == 3


@pytest.mark.parametrize("params", [{"limit": "²"}, {"limit": "0"}, {"limit": "101"}, {"limit": "x"},
                                    {"cursor": "-1"}, {"cursor": "1" * 10}, {"cursor": "a"}])
def test_bad_release_query_is_422(client, params):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/releases", params=params, headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_failed", resp.text


def test_malformed_rollback_body_is_400(client):
    ident = create_deployment(client)
    resp = client.simulate_post(f"/api/deploy/apps/{ident}/rollback", body="{nope", headers=auth())
    assert resp.status_code == 400 and resp.json["error"]["code"] == "malformed_json"


def test_a_heal_runs_the_version_that_served_by_its_digest_and_a_restart_the_tag_as_it_is_now(client, settings):
    """The tag on the host may have moved meanwhile (another deployment's restart of the same tag):
    a heal, a repair or a start after a stop runs the digest that served; only a restart pulls the tag."""
    ident = deploy_three(client, settings)
    d = Deployment.get_by_id(ident)
    assert state.desired_item(d)["image"] == f"docker.io/library/nginx@{digest(3)}"
    with database_proxy.obj.atomic():  # what the health prober does to an app that stopped answering
        state.change(d, "restart", None, timeout_s=60, revision=d.revision + 1)
    healed = state.desired_item(Deployment.get_by_id(ident))
    assert (healed["image"], healed["pull"]) == (f"docker.io/library/nginx@{digest(3)}", "missing")
    run_job(settings, ran(3))
    assert client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth()).status_code == 200
    restarted = state.desired_item(Deployment.get_by_id(ident))
    assert (restarted["image"], restarted["pull"]) == (IMAGE, "always")


def test_a_reconcile_reads_every_deployments_releases_in_one_query(client, settings, monkeypatch):
    from buddo_deploy.services import engine
    from buddo_deploy.services import releases as release_service
    from buddo_deploy.settings import RELEASE_HISTORY

    idents = []
    for i in range(3):
        ident = create_deployment(client, f"op-{i}", image=IMAGE, subdomain=f"hist-{i}")
        run_job(settings, ran(10 * i + 1))
        for n in range(RELEASE_HISTORY + i):  # more releases than the history keeps
            client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth(f"op-{i}"))
            run_job(settings, ran(10 * i + n + 2))
        idents.append(ident)
    assert release_service.histories(idents) == {i: release_service.history(i) for i in idents}
    assert all(len(release_service.history(i)) == RELEASE_HISTORY for i in idents)
    host = Deployment.get_by_id(idents[0]).host
    items, _, _ = engine.reconcile_scope(host)
    assert {i["id"]: i["releases"] for i in items} == {
        i: [release_service.by_digest(IMAGE, d) for d in release_service.history(i)] for i in idents}
    few = count_statements(monkeypatch, lambda: engine.reconcile_scope(host))
    for i in range(3, 6):
        create_deployment(client, f"op-{i}", image=IMAGE, subdomain=f"hist-{i}")
        run_job(settings, ran(100 + i))
    assert count_statements(monkeypatch, lambda: engine.reconcile_scope(host)) == few  # not one more per deployment


def test_a_page_of_releases_reads_what_the_host_keeps_once(client, settings, monkeypatch):
    ident = deploy_three(client, settings)
    one = count_statements(monkeypatch, lambda: releases(client, ident, limit=1))
    assert count_statements(monkeypatch, lambda: releases(client, ident, limit=3)) == one
