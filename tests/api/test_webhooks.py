"""Outbound webhooks: endpoints (CRUD, secret once, URLs checked), events as deliveries, and
the deliverer against a real local receiver: signatures verified with the Standard Webhooks
reference library, retries on a schedule, an endpoint that keeps failing disabled."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import socket
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest
from buddo_deploy.app import create_app
from buddo_deploy.models import Deployment, WebhookDelivery, database_proxy, utcnow
from buddo_deploy.services import webhooks
from buddo_deploy.services.webhooks import Deliverer, Refused, check_url, events_of_entry, resolve
from buddo_deploy.vocabulary import WebhookEvent

from tests.helpers import Receiver, auth, create_body, migrate


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture
def local(settings) -> Iterator[falcon.testing.TestClient]:
    """A client whose webhooks may go to this machine (as make up's)."""
    allowed = allowing(settings)
    migrate(allowed)
    yield falcon.testing.TestClient(create_app(allowed))
    database_proxy.obj.close()


def allowing(settings):
    return dataclasses.replace(settings, webhook_allow_private=True)


def register(client, url: str, operator: str = "operator-1", **body: Any) -> dict[str, Any]:
    resp = client.simulate_post("/api/deploy/webhooks", json={"url": url, **body}, headers=auth(operator))
    assert resp.status_code == 201, resp.text
    return dict(resp.json)


def test_an_endpoint_is_registered_shown_without_its_secret_changed_and_deleted(local):
    created = register(local, "https://hooks.example.com/buddo", event_types=["deploy.failed", "deploy.succeeded"])
    ident, secret = created["webhook"]["id"], created["secret"]
    assert secret.startswith("whsec_") and created["webhook"]["enabled"] is True
    assert created["webhook"]["event_types"] == ["deploy.failed", "deploy.succeeded"]
    listed = local.simulate_get("/api/deploy/webhooks", headers=auth())
    assert [w["id"] for w in listed.json["webhooks"]] == [ident] and secret not in listed.text
    assert secret not in local.simulate_get(f"/api/deploy/webhooks/{ident}", headers=auth()).text
    # Another operator's endpoint is not found, nor listed.
    assert local.simulate_get(f"/api/deploy/webhooks/{ident}", headers=auth("operator-2")).status_code == 404
    assert local.simulate_get("/api/deploy/webhooks", headers=auth("operator-2")).json == {"webhooks": []}
    changed = local.simulate_patch(f"/api/deploy/webhooks/{ident}", json={"event_types": ["deployment.destroyed"],
                                                                          "enabled": False}, headers=auth())
    assert changed.status_code == 200, changed.text
    assert changed.json["webhook"]["event_types"] == ["deployment.destroyed"]
    assert changed.json["webhook"]["enabled"] is False
    assert changed.json["webhook"]["disabled_reason"] == "disabled by the operator"
    # Its routes are operations like any: keyed retries, rate limits (the {webhook_id:uuid} converter).
    bad_key = local.simulate_delete(f"/api/deploy/webhooks/{ident}", headers=auth() | {"Idempotency-Key": "a b"})
    assert bad_key.status_code == 422 and bad_key.json["error"]["code"] == "invalid_idempotency_key"
    assert local.simulate_delete(f"/api/deploy/webhooks/{ident}", headers=auth()).status_code == 200
    assert local.simulate_get(f"/api/deploy/webhooks/{ident}", headers=auth()).status_code == 404


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/", "https://127.0.0.1/", "https://10.1.2.3/x", "https://[::1]/", "https://localhost/",
    "https://169.254.169.254/latest", "https://user:pw@hooks.example.com/", "ftp://hooks.example.com/",
    "https://hooks.example.com:99999/", "https://[::ffff:127.0.0.1]/",
])
def test_targets_on_this_machine_or_a_private_network_are_refused(client, url):
    resp = client.simulate_post("/api/deploy/webhooks", json={"url": url}, headers=auth())
    assert resp.status_code == 422, (url, resp.text)
    assert resp.json["error"]["details"][0]["field"] == "url"
    assert client.simulate_get("/api/deploy/webhooks", headers=auth()).json == {"webhooks": []}


def test_link_local_is_refused_even_where_private_addresses_are_allowed():
    assert check_url("http://127.0.0.1:9/x", allow_private=True)
    with pytest.raises(Exception, match="not a public address"):
        check_url("http://169.254.169.254/latest", allow_private=True)


def test_each_attempt_checks_every_address_the_name_resolves_to():
    def lookup(*addresses: str):
        return lambda *args, **kwargs: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 443)) for a in addresses]

    assert resolve("https://hooks.example.com/", False, lookup("93.184.216.34")) == "93.184.216.34"
    for rebound in ("127.0.0.1", "10.0.0.7", "169.254.169.254"):  # a name that now points here
        with pytest.raises(Refused, match=rebound):
            resolve("https://hooks.example.com/", False, lookup("93.184.216.34", rebound))
    assert resolve("http://hooks.test/", True, lookup("127.0.0.1")) == "127.0.0.1"
    with pytest.raises(Refused):
        resolve("http://hooks.test/", True, lookup("169.254.169.254"))
    assert not webhooks.address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), False)


def test_at_most_ten_endpoints_and_bad_bodies_change_nothing(client_with):
    local = client_with(rate_limits_enabled=False)
    for n in range(webhooks.MAX_ENDPOINTS):
        register(local, f"https://hooks.example.com/{n}")
    over = local.simulate_post("/api/deploy/webhooks", json={"url": "https://hooks.example.com/x"}, headers=auth())
    assert over.status_code == 429 and over.json["error"]["code"] == "webhook_limit_reached"
    for body in ({"url": "https://hooks.example.com/", "event_types": ["deploy.exploded"]},
                 {"url": "https://hooks.example.com/", "event_types": []}, {"url": 7}, {"urls": "x"}):
        resp = local.simulate_post("/api/deploy/webhooks", json=body, headers=auth("operator-3"))
        assert resp.status_code == 422, (body, resp.text)
    assert local.simulate_get("/api/deploy/webhooks", headers=auth("operator-3")).json == {"webhooks": []}


@pytest.mark.parametrize(("action", "status", "details", "events"), [
    ("deploy", "completed", {}, ["deploy.succeeded"]),
    ("deploy", "failed", {"message": "x"}, ["deploy.failed"]),
    ("update", "failed", {"rolled_back": True}, ["update.failed", "deployment.rolled_back"]),
    ("deploy", "completed", {"rollback_to": 1}, ["rollback.succeeded"]),
    ("restart", "completed", {"reason": "health"}, ["deployment.healed"]),
    ("restart", "failed", {"reason": "crash_loop"}, ["deployment.crash_loop_paused"]),
    ("deploy", "completed", {"reason": "custom_domain", "custom_domain_status": "active"}, ["custom_domain.verified"]),
    ("deploy", "completed", {"reason": "custom_domain", "custom_domain_status": "misconfigured"},
     ["custom_domain.misconfigured"]),
    ("destroy", "completed", {}, ["deployment.destroyed"]),
    ("suspend", "completed", {}, ["deployment.suspended"]),
    ("reactivate", "completed", {}, ["deployment.reactivated"]),
    ("restart", "failed", {"reason": "superseded"}, []),
    ("create", "completed", {}, []),
    ("deploy", "pending", {}, []),
])
def test_which_audit_entries_are_which_events(action, status, details, events):
    assert events_of_entry(action, status, details) == events


def _attempts_on_time(event: dt.datetime, first: dt.datetime) -> list[dt.timedelta]:
    """When each attempt of a delivery that always fails is made (from the event), each made when due."""
    made: list[dt.timedelta] = []
    at: dt.datetime | None = first
    while at is not None:
        made.append(at - event)
        at = webhooks.next_attempt_at(event, len(made), at)
    return made


def test_a_failing_delivery_is_tried_on_the_schedule_and_a_last_time_24_hours_after_the_event():
    event = dt.datetime(2025, 3, 1, 12, 0)
    made = _attempts_on_time(event, event)
    assert [int(at.total_seconds()) for at in made] == [0, 5, 305, 2105, 9305, 27305, 63305, 86400]
    assert made[-1] == webhooks.RETRY_FOR
    # A first attempt made late (the worker was down) leaves room for fewer retries; the last is
    # still 24 hours after the event, and none comes after that.
    late = _attempts_on_time(event, event + dt.timedelta(hours=20))
    assert late[-1] == webhooks.RETRY_FOR and len(late) == 6
    assert webhooks.next_attempt_at(event, 1, event + webhooks.RETRY_FOR) is None


def _deliveries() -> list[WebhookDelivery]:
    return list(WebhookDelivery.select().order_by(WebhookDelivery.inserted_at, WebhookDelivery.id))


def test_an_event_is_delivered_signed_and_a_failing_receiver_is_retried_then_disabled(local, settings, receiver):
    created = register(local, receiver.url)
    secret = created["webhook"]["id"], created["secret"]
    other = register(local, receiver.url, operator="operator-2")  # hears nothing of operator-1's
    app = local.simulate_post("/api/deploy/apps", json=create_body(), headers=auth()).json["deployment"]
    deployment = Deployment.get_by_id(app["id"])
    webhooks.emit_entry(deployment, "entry-1", "deploy", "completed", {})
    now = [utcnow() + dt.timedelta(seconds=1)]  # the deliverer's clock: the test moves it
    deliverer = Deliverer(allowing(settings), clock=lambda: now[0])
    assert deliverer.tick() == 1
    [message] = receiver.verified(secret[1])
    assert message["type"] == "deploy.succeeded" and message["data"]["deployment_id"] == app["id"]
    assert message["data"]["audit_entry_id"] == "entry-1"
    [delivery] = _deliveries()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("succeeded", 1, 200)
    assert receiver.received[0]["headers"]["webhook-id"] == delivery.id
    assert other["secret"] != secret[1]

    # A receiver that answers 500: retried 5 s later, then on the schedule; the log shows it.
    receiver.status = 500
    webhooks.emit(deployment, WebhookEvent.DESTROYED)
    now[0] = utcnow() + dt.timedelta(seconds=1)
    assert deliverer.tick() == 1
    assert deliverer.tick() == 0  # not due yet
    now[0] += dt.timedelta(seconds=5)
    assert deliverer.tick() == 1
    log = local.simulate_get(f"/api/deploy/webhooks/{secret[0]}/deliveries", headers=auth()).json
    newest = log["deliveries"][0]
    assert (newest["event_type"], newest["state"], newest["attempts"], newest["last_status"]) == (
        "deployment.destroyed", "pending", 2, 500)
    assert len(receiver.verified(secret[1])) == 3  # one success, two attempts: each signed
    # Failing for a day: the endpoint is disabled and says why; what was pending is given up.
    now[0] += webhooks.DISABLE_AFTER
    with database_proxy.obj.connection_context():
        WebhookDelivery.update(next_attempt_at=now[0]).where(WebhookDelivery.state == "pending").execute()
    assert deliverer.tick() == 1
    endpoint = local.simulate_get(f"/api/deploy/webhooks/{secret[0]}", headers=auth()).json["webhook"]
    assert endpoint["enabled"] is False and "answered HTTP 500" in endpoint["disabled_reason"]
    assert [d.state for d in _deliveries()] == ["succeeded", "failed"]
    webhooks.emit(deployment, WebhookEvent.DESTROYED)  # a disabled endpoint gets nothing new
    assert len(_deliveries()) == 2
    again = local.simulate_patch(f"/api/deploy/webhooks/{secret[0]}", json={"enabled": True}, headers=auth())
    assert again.json["webhook"]["enabled"] is True and again.json["webhook"]["disabled_reason"] is None


@pytest.mark.parametrize("delivered_meanwhile", [False, True])
def test_an_endpoint_whose_one_delivery_failed_every_attempt_is_disabled(local, settings, receiver,
                                                                          delivered_meanwhile):
    """One event and a receiver that answers 500: the last attempt, 24 hours after the event,
    disables the endpoint, though its first failure (the worker ticks every second) was a
    second after the event, less than 24 hours before. A success to the endpoint since that
    event keeps it enabled."""
    ident = register(local, receiver.url)["webhook"]["id"]
    app = local.simulate_post("/api/deploy/apps", json=create_body(), headers=auth()).json["deployment"]
    deployment = Deployment.get_by_id(app["id"])
    receiver.status = 500
    webhooks.emit(deployment, WebhookEvent.DESTROYED)
    [delivery] = _deliveries()
    now = [delivery.inserted_at + dt.timedelta(seconds=1)]  # the deliverer's clock: the test moves it
    deliverer = Deliverer(allowing(settings), clock=lambda: now[0])
    assert deliverer.tick() == 1
    if delivered_meanwhile:  # another event, delivered before the first one's second attempt
        receiver.status = 200
        webhooks.emit(deployment, WebhookEvent.STOPPED)
        WebhookDelivery.update(next_attempt_at=now[0]).where(WebhookDelivery.id != delivery.id).execute()
        assert deliverer.tick() == 1
        receiver.status = 500
    made = [now[0] - delivery.inserted_at]
    while (current := WebhookDelivery.get_by_id(delivery.id)).state == "pending":
        now[0] = current.next_attempt_at
        assert deliverer.tick() == 1
        made.append(now[0] - delivery.inserted_at)

    assert made[-1] == webhooks.RETRY_FOR and len(made) == len(webhooks.RETRY_SCHEDULE_S) + 1
    assert current.last_status == 500
    endpoint = local.simulate_get(f"/api/deploy/webhooks/{ident}", headers=auth()).json["webhook"]
    if delivered_meanwhile:
        assert endpoint["enabled"] is True and endpoint["failing_since"] is not None
    else:
        assert endpoint["enabled"] is False
        reason = endpoint["disabled_reason"]
        assert f"delivery {delivery.id} failed every attempt in the 24 hours after its event" in reason
        assert reason.startswith("every attempt failed since ") and reason.endswith("the last: answered HTTP 500")


def test_an_endpoint_whose_late_delivery_failed_its_fewer_attempts_is_disabled_too(local, settings, receiver):
    """The worker was down: the first attempt comes 20 hours after the event, so fewer attempts fit
    in the 24 hours; the last one, at 24 hours, still disables the endpoint."""
    ident = register(local, receiver.url)["webhook"]["id"]
    app = local.simulate_post("/api/deploy/apps", json=create_body(), headers=auth()).json["deployment"]
    receiver.status = 500
    webhooks.emit(Deployment.get_by_id(app["id"]), WebhookEvent.DESTROYED)
    [delivery] = _deliveries()
    now = [delivery.inserted_at + dt.timedelta(hours=20)]
    deliverer = Deliverer(allowing(settings), clock=lambda: now[0])
    assert deliverer.tick() == 1
    attempts = 1
    while (current := WebhookDelivery.get_by_id(delivery.id)).state == "pending":
        now[0] = current.next_attempt_at
        assert deliverer.tick() == 1
        attempts += 1
    assert now[0] - delivery.inserted_at == webhooks.RETRY_FOR and attempts < len(webhooks.RETRY_SCHEDULE_S) + 1
    endpoint = local.simulate_get(f"/api/deploy/webhooks/{ident}", headers=auth()).json["webhook"]
    assert endpoint["enabled"] is False and str(delivery.id) in endpoint["disabled_reason"]


def test_a_delivery_is_never_sent_to_an_address_that_is_not_allowed(client, settings, receiver):
    """Registered while allowed, then the platform runs in production: the attempt is refused
    before any packet is sent, and says why."""
    app = client.simulate_post("/api/deploy/apps", json=create_body(), headers=auth()).json["deployment"]
    endpoint, _ = webhooks.Webhooks(allowing(settings)).create("operator-1", receiver.url, None, None)
    webhooks.emit(Deployment.get_by_id(app["id"]), WebhookEvent.DESTROYED)
    assert Deliverer(settings).tick() == 1
    [delivery] = _deliveries()
    assert receiver.received == []
    assert delivery.attempts == 1 and "127.0.0.1" in delivery.last_error and "not allowed" in delivery.last_error
    assert json.loads(delivery.payload)["type"] == "deployment.destroyed"
    assert endpoint.enabled
