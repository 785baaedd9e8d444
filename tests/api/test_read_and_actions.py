from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import pytest
from buddo_deploy.models import Deployment, Job, JobTarget, database_proxy
from buddo_deploy.schemas import DeploymentEnvelope, DeploymentList, LogList, StatusOut
from buddo_deploy.services.lifecycle import statuses_reached

from tests.helpers import auth, create_body


def create(client, operator="operator-1", **overrides):
    resp = client.simulate_post("/api/deploy/apps", json=create_body(**overrides), headers=auth(operator))
    assert resp.status_code == 201, resp.text
    return resp.json["deployment"]


def test_get_details_and_status(client):
    created = create(client)
    detail = client.simulate_get(f"/api/deploy/apps/{created['id']}", headers=auth())
    assert detail.status_code == 200
    DeploymentEnvelope.model_validate(detail.json)
    assert detail.json["deployment"] == created
    status = client.simulate_get(f"/api/deploy/apps/{created['id']}/status", headers=auth())
    assert status.status_code == 200
    assert set(status.json) == {"id", "status", "subdomain", "health_status", "last_health_check"}
    StatusOut.model_validate(status.json)
    assert status.json["status"] == "pending" and status.json["health_status"] == "unknown"


def test_unknown_and_malformed_ids_are_404(client):
    for path in (f"/api/deploy/apps/{uuid.uuid4()}", f"/api/deploy/apps/{uuid.uuid4()}/status",
                 "/api/deploy/apps/not-a-uuid", "/api/deploy/nothing"):
        resp = client.simulate_get(path, headers=auth())
        assert resp.status_code == 404, path
        assert resp.json["error"]["code"] in {"deployment_not_found", "not_found"}


def test_method_not_allowed_is_enveloped(client):
    resp = client.simulate_put("/api/deploy/apps", headers=auth())
    assert resp.status_code == 405
    assert resp.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("suffix,method", [("", "GET"), ("/status", "GET"), ("/logs", "GET"),
                                           ("/restart", "POST"), ("/stop", "POST"), ("", "DELETE")])
def test_another_operators_deployment_is_403(client, suffix, method):
    created = create(client, operator="owner")
    resp = client.simulate_request(method, f"/api/deploy/apps/{created['id']}{suffix}", headers=auth("intruder"))
    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "forbidden"
    assert client.simulate_get(f"/api/deploy/apps/{created['id']}", headers=auth("owner")).json[
        "deployment"]["status"] == "pending"


def test_list_is_newest_first_with_cursor_pagination(client):
    ids = [create(client, subdomain=f"app-{i}", tier=tier)["id"]
           for i, tier in enumerate(["buddo-starter", "buddo-pro", "btc-starter", "btc-pro", "btc-pro"])]
    create(client, operator="someone-else", subdomain="theirs")
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.simulate_get("/api/deploy/apps", params=params, headers=auth())
        assert page.status_code == 200
        DeploymentList.model_validate(page.json)
        seen += [d["id"] for d in page.json["deployments"]]
        cursor = page.json["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_list_filters_and_excludes_destroyed(client):
    keep = create(client, subdomain="keep")
    gone = create(client, subdomain="gone")
    client.simulate_post(f"/api/deploy/apps/{keep['id']}/stop", headers=auth())
    client.simulate_delete(f"/api/deploy/apps/{gone['id']}", headers=auth())

    def listed(**params):
        resp = client.simulate_get("/api/deploy/apps", params=params, headers=auth())
        assert resp.status_code == 200, resp.text
        return [d["subdomain"] for d in resp.json["deployments"]]

    assert listed() == ["keep"]
    assert listed(include_destroyed="true") == ["gone", "keep"]
    assert listed(status="destroyed") == ["gone"]
    assert listed(status="stopped") == ["keep"]
    assert listed(status="running") == []


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"limit": "\u00b2"},
                                    {"limit": "\u0661"}, {"limit": ""}, {"status": "sleeping"},
                                    {"status": "running\n"}, {"status": ""}, {"cursor": "garbage!"},
                                    {"cursor": "a\x00"}, {"include_destroyed": "maybe"},
                                    {"cursor": _cursor(["2026-01-01T00:00:00", 5])}, {"cursor": _cursor([1, 2])},
                                    {"cursor": _cursor({"a": 1, "b": 2})}, {"cursor": _cursor("ab")},
                                    {"cursor": _cursor(["2026-01-01T00:00:00", "not-a-uuid"])},
                                    {"cursor": _cursor(["yesterday", "00000000-0000-0000-0000-000000000000"])},
                                    {"cursor": base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")}])
def test_bad_list_parameters_are_422(client, params):
    resp = client.simulate_get("/api/deploy/apps", params=params, headers=auth())
    assert resp.status_code == 422
    assert resp.json["error"]["details"][0]["field"] == next(iter(params))


def test_restart_stop_destroy_and_audit_log(client):
    created = create(client)
    path = f"/api/deploy/apps/{created['id']}"
    restarted = client.simulate_post(f"{path}/restart", headers=auth())
    assert restarted.status_code == 200
    assert restarted.json["deployment"]["status"] == "deploying"
    stopped = client.simulate_post(f"{path}/stop", headers=auth())
    assert stopped.json["deployment"]["status"] == "stopped"
    again = client.simulate_post(f"{path}/stop", headers=auth())
    assert again.status_code == 200 and again.json["deployment"]["status"] == "stopped"
    destroyed = client.simulate_delete(path, headers=auth())
    assert destroyed.status_code == 200
    assert destroyed.json == {"message": "Deployment destroyed", "id": created["id"]}
    assert client.simulate_get(path, headers=auth()).json["deployment"]["status"] == "destroyed"

    for suffix, method in (("/restart", "POST"), ("/stop", "POST"), ("", "DELETE")):
        resp = client.simulate_request(method, f"{path}{suffix}", headers=auth())
        assert resp.status_code == 422, suffix
        assert resp.json["error"]["code"] == "deployment_destroyed"

    logs = client.simulate_get(f"{path}/logs", headers=auth())
    assert logs.status_code == 200
    LogList.model_validate(logs.json)
    entries = logs.json["logs"]
    assert [(e["action"], e["status"]) for e in entries] == [
        ("create", "completed"), ("deploy", "pending"), ("restart", "pending"), ("stop", "pending"),
        ("destroy", "pending"),
    ]
    assert entries[0]["initiated_by"] == "operator-1" and entries[1]["initiated_by"] is None
    assert all(set(e) == {"id", "action", "status", "initiated_by", "inserted_at", "details", "job_id"}
               for e in entries)
    # One converge of the host, coalesced: the deployment to generation 4 (create, restart, stop, destroy).
    assert [j.action for j in Job.select()] == ["converge"]
    assert [(t.deployment_id, t.generation) for t in JobTarget.select()] == [(uuid.UUID(created["id"]), 4)]


def test_a_request_id_is_echoed_only_when_it_is_sane_as_a_whole():
    import falcon
    import falcon.testing
    from buddo_deploy.middleware import RequestId

    def request_id(incoming: str) -> str:
        environ = falcon.testing.create_environ()
        environ["HTTP_X_REQUEST_ID"] = incoming  # raw, as a WSGI server may pass it on
        req = falcon.Request(environ)
        RequestId().process_request(req, falcon.Response())
        return str(req.context.request_id)

    assert request_id("trace-12345678") == "trace-12345678"
    assert request_id("trace-12345678\n") != "trace-12345678\n"


def test_status_wait_answers_once_reached_or_at_the_timeout(client):
    """In process (no parking server): the request waits holding its thread; serving.py parks it
    (tests/integration/test_server.py), both answer the same."""
    created = create(client)
    url = f"/api/deploy/apps/{created['id']}/status"
    timed_out = client.simulate_get(url, params={"wait_for": "running", "timeout": "1"}, headers=auth())
    assert (timed_out.status_code, timed_out.headers["Wait-Result"], timed_out.json["status"]) == (
        200, "timeout", "pending")

    def change() -> None:
        time.sleep(0.3)
        with database_proxy.connection_context():
            Deployment.update(status="failed").where(Deployment.id == created["id"]).execute()

    changer = threading.Thread(target=change)
    changer.start()
    reached = client.simulate_get(url, params={"wait_for": "running,failed", "timeout": "30"}, headers=auth())
    changer.join()
    assert (reached.status_code, reached.headers["Wait-Result"], reached.json["status"]) == (
        200, "reached", "failed")
    # The parked waits' check: one reached, one not, one whose deployment is gone (answers: 404).
    gone = (str(uuid.uuid4()), frozenset({"running"}))
    keys = {(created["id"], frozenset({"failed"})), (created["id"], frozenset({"running"})), gone}
    assert statuses_reached(keys) == {(created["id"], frozenset({"failed"})), gone}
