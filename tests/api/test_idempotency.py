"""Idempotency-Key on POST, PATCH, PUT and DELETE: a retry gets the first answer again and does nothing."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from buddo_deploy.models import AuditEntry, Deployment, IdempotencyKey, Job, utcnow
from buddo_deploy.services import idempotency

from tests.helpers import auth, create_body


def _create(client: Any, key: str | None, operator: str = "operator-1", **body: Any) -> Any:
    headers = auth(operator) | ({"Idempotency-Key": key} if key is not None else {})
    return client.simulate_post("/api/deploy/apps", json=create_body(**body), headers=headers)


def test_a_retried_create_gets_the_same_201_and_makes_one_deployment(client):
    first = _create(client, "create-1", env_vars={"API_TOKEN": "s3cret-value-91"})
    again = _create(client, "create-1", env_vars={"API_TOKEN": "s3cret-value-91"})
    assert first.status_code == again.status_code == 201
    assert again.json == first.json and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert Deployment.select().count() == 1 and Job.select().count() == 1
    assert AuditEntry.select().where(AuditEntry.action == "deploy").count() == 1
    # The key is remembered by an HMAC of the request, never by its body (env values).
    [row] = IdempotencyKey.select()
    assert "s3cret-value-91" not in f"{row.fingerprint} {row.body} {row.headers}"
    # Without the key, the same body is a new request: the subdomain is taken.
    assert _create(client, None, env_vars={"API_TOKEN": "s3cret-value-91"}).status_code == 422


def test_a_retried_webhook_registration_gets_its_secret_again_which_is_stored_encrypted(client):
    """The signing secret is shown once: in the registration's answer, which a keyed retry gets
    again (the client that lost it needs it); the answer is remembered encrypted, never in the clear."""
    headers = auth() | {"Idempotency-Key": "hook-1"}
    body = {"url": "https://hooks.example.com/buddo"}
    first = client.simulate_post("/api/deploy/webhooks", json=body, headers=headers)
    again = client.simulate_post("/api/deploy/webhooks", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, first.text
    secret = first.json["secret"]
    assert again.json == first.json and again.headers["idempotent-replayed"] == "true"
    [row] = IdempotencyKey.select()
    assert row.body and secret not in row.body and secret.removeprefix("whsec_") not in row.body
    assert first.json["webhook"]["id"] not in row.body  # the whole answer is sealed, not the secret alone
    shown = client.simulate_get(f"/api/deploy/webhooks/{first.json['webhook']['id']}", headers=auth())
    assert shown.status_code == 200 and secret not in shown.text


def test_an_answer_stored_in_the_clear_is_forgotten_and_its_retry_runs(client):
    """During a rolling upgrade a process of the version before migration 0030 stores an answer
    in the clear: a retry cannot replay it, so it runs as a new request (not a 500 for 24 h)."""
    first = _create(client, "upgrade-1")
    assert first.status_code == 201
    IdempotencyKey.update(body=first.text).execute()  # as the older process stored it
    again = _create(client, "upgrade-1")  # runs again: the subdomain is the first one's now
    assert again.status_code == 422 and again.json["error"]["code"] == "subdomain_taken", again.text
    assert "idempotent-replayed" not in again.headers


def test_the_same_key_for_another_request_is_422_and_changes_nothing(client):
    assert _create(client, "k-2").status_code == 201
    other = _create(client, "k-2", subdomain="another-app")
    assert other.status_code == 422 and other.json["error"]["code"] == "idempotency_key_reused"
    assert other.json["error"]["details"][0]["field"] == "Idempotency-Key"
    assert Deployment.select().count() == 1
    ident = Deployment.get().id
    # Another path with the same key and body is another request too.
    restart = client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth() | {"Idempotency-Key": "k-2"})
    assert restart.status_code == 422 and restart.json["error"]["code"] == "idempotency_key_reused"


def test_keys_are_each_operators_own(client):
    assert _create(client, "shared-key").status_code == 201
    theirs = _create(client, "shared-key", operator="operator-2", subdomain="their-app")
    assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
    assert Deployment.select().count() == 2


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\tkey", "é-key"])
def test_a_malformed_key_is_422(client, key):
    resp = _create(client, key)
    assert resp.status_code == 422 and resp.json["error"]["code"] == "invalid_idempotency_key", resp.text
    assert Deployment.select().count() == 0


def test_an_error_answer_is_replayed_but_a_limit_is_not(client_with):
    client = client_with(rate_limit_write=2)
    bad = _create(client, "bad-1", subdomain="-bad-")
    assert bad.status_code == 422
    again = _create(client, "bad-1", subdomain="-bad-")
    assert again.status_code == 422 and again.json == bad.json and again.headers["idempotent-replayed"] == "true"
    # The write limit (2 a window) is reached by those two: a 429 is not remembered, so the
    # key is free for the retry once the window passed.
    limited = _create(client, "later-1", subdomain="later")
    assert limited.status_code == 429
    assert IdempotencyKey.get_or_none(IdempotencyKey.idempotency_key == "later-1") is None


def test_a_retry_waits_for_the_first_answer_and_two_at_once_make_one_deployment(client):
    answers: list[Any] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        barrier.wait()
        answers.append(_create(client, "together"))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [201, 201]
    assert answers[0].json == answers[1].json
    assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == ["", "true"]
    assert Deployment.select().count() == 1


def test_a_key_still_being_answered_is_409_after_the_wait_and_an_abandoned_one_runs_again(client, monkeypatch):
    monkeypatch.setattr(idempotency, "WAIT_S", 0.1)
    assert _create(client, "in-flight").status_code == 201
    # As if the first request were still being answered: the retry waits, then is told to come back.
    IdempotencyKey.update(state="started", status=None, body=None).execute()
    busy = _create(client, "in-flight")
    assert busy.status_code == 409 and busy.json["error"]["code"] == "idempotency_key_in_use"
    assert busy.headers["retry-after"] == "1"
    # Started long ago and never answered (its process died): abandoned, the retry runs (and
    # finds what the first did: the subdomain is taken).
    IdempotencyKey.update(created_at=utcnow() - dt.timedelta(minutes=5)).execute()
    rerun = _create(client, "in-flight")
    assert rerun.status_code == 422 and rerun.json["error"]["code"] == "subdomain_taken", rerun.text


def test_a_key_is_kept_24_hours(client):
    assert _create(client, "day-old").status_code == 201
    [row] = IdempotencyKey.select()
    assert row.expires_at - row.created_at >= dt.timedelta(hours=24)
    IdempotencyKey.update(expires_at=utcnow() - dt.timedelta(seconds=1)).execute()
    assert idempotency.purge_expired() == 1
    retry = _create(client, "day-old")
    assert retry.status_code == 422 and retry.json["error"]["code"] == "subdomain_taken"


def test_delete_and_restart_with_a_key_run_once(client):
    ident = _create(client, None).json["deployment"]["id"]
    for _ in range(2):
        resp = client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth() | {"Idempotency-Key": "r1"})
        assert resp.status_code == 200, resp.text
    assert AuditEntry.select().where(AuditEntry.action == "restart").count() == 1
    gone = [client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth() | {"Idempotency-Key": "d1"})
            for _ in range(2)]
    assert [g.status_code for g in gone] == [gone[0].status_code] * 2 and gone[0].status_code < 300
    assert gone[1].json == gone[0].json and gone[1].headers["idempotent-replayed"] == "true"
    assert AuditEntry.select().where(AuditEntry.action == "destroy").count() == 1


def test_the_openapi_document_offers_the_key_on_every_operators_write(client):
    paths = client.simulate_get("/api/deploy/openapi.json").json["paths"]
    keyed, unkeyed = set(), set()
    for path_item in paths.values():
        for method in ("post", "patch", "put", "delete"):
            if method in path_item:
                operation = path_item[method]
                names = {p["name"] for p in operation.get("parameters", [])}
                (keyed if "Idempotency-Key" in names else unkeyed).add(operation["operationId"])
                if "Idempotency-Key" in names:
                    assert {"409", "422"} <= set(operation["responses"])
    assert {"createDeployment", "restartDeployment", "stopDeployment", "destroyDeployment", "rollbackDeployment",
            "putRegistryLogin", "deleteRegistryLogin"} <= keyed
    assert unkeyed == {"creditAccount"}  # the signed webhook: idempotent by its payment reference
