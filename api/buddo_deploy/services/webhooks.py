"""Outbound webhooks: an operator's endpoints, the events of their deployments, and their delivery.

Signed as Standard Webhooks says (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>`` with a ``whsec_`` secret), by its reference
library. An event is written as one delivery per subscribed endpoint in the transaction of
the change it reports (``emit``), so none is lost and none is sent for a change that rolled
back. The worker sends what is due (``Deliverer``), each delivery claimed by a short lease
so that one worker sends it, and retries a failure on a schedule for 24 hours. An endpoint
that has failed every attempt for ``DISABLE_AFTER``, or whose delivery failed every attempt
of its schedule with no success since that delivery's event, is disabled, with the reason shown.

Operators are strangers, so a target is checked twice: at registration (https, no IP
literal or name of this machine or a private network) and at each attempt (every address
the name resolves to must be public; the request then goes to the checked address, with
the name as Host and TLS server name, so a second lookup cannot lead it elsewhere).
``BUDDO_WEBHOOK_ALLOW_PRIVATE`` allows http, loopback and private addresses (tests, make
up); link-local (cloud metadata), multicast and unspecified addresses are never allowed.
Redirects are not followed; the answer's body is not read.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import re
import secrets
import socket
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from ..crypto import decrypt_secret, encrypt_secret
from ..db import write_transaction
from ..domain_errors import Invalid, LimitReached, NotFound
from ..models import Deployment, WebhookDelivery, WebhookEndpoint, database_proxy, utcnow
from ..settings import Settings
from ..vocabulary import AuditAction, AuditStatus, DeliveryState, WebhookEvent
from . import pages

log = logging.getLogger(__name__)

MAX_ENDPOINTS = 10
# Seconds from each failed attempt to the next (Svix's schedule, shortened at the start);
# the delay that would pass RETRY_FOR after the event is cut short, so the last attempt is then.
RETRY_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
RETRY_FOR = dt.timedelta(hours=24)
# An endpoint whose every attempt failed for this long is disabled (so is one with a delivery
# that failed every attempt of its schedule and no success since that delivery's event).
DISABLE_AFTER = dt.timedelta(hours=24)
ATTEMPT_TIMEOUT_S = 10.0
# A claimed delivery is someone's for this long (an attempt takes ATTEMPT_TIMEOUT_S at most).
LEASE = dt.timedelta(seconds=60)
SENDERS = 4


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _blocked_always(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved


def address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if _blocked_always(address):
        return False
    return allow_private or address.is_global


def check_url(url: str, allow_private: bool) -> str:
    """The target URL as registered, or Invalid (field ``url``, code ``webhook_url_not_allowed``:
    what is allowed depends on the platform's setting, which no schema can say)."""
    def refuse(message: str) -> Invalid:
        return Invalid.for_field("url", message, code="webhook_url_not_allowed")

    parts = urlsplit(url)
    schemes = {"https", "http"} if allow_private else {"https"}
    if parts.scheme not in schemes or not parts.hostname:
        raise refuse(f"must be an absolute {' or '.join(sorted(schemes))} URL")
    if parts.username or parts.password:
        raise refuse("must not carry credentials (the signature proves the sender)")
    host = parts.hostname
    try:
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError as exc:
        raise refuse("has an invalid port") from exc
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not address_allowed(literal, allow_private):
        raise refuse(f"{host} is not a public address")
    if literal is None and not allow_private and (host == "localhost" or host.endswith((".localhost", ".local"))):
        raise refuse(f"{host} names this machine or a local network")
    return url


def _event_types(value: Iterable[str] | None) -> list[str]:
    return sorted(set(value)) if value else sorted(WebhookEvent)


class Webhooks:
    """The API's side: an operator's endpoints and their delivery log."""

    def __init__(self, settings: Settings) -> None:
        self.secret_key = settings.secret_key
        self.allow_private = settings.webhook_allow_private

    def create(self, operator_id: str, url: str, event_types: list[str] | None,
               description: str | None) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its secret (shown this once)."""
        check_url(url, self.allow_private)
        secret = new_secret()
        now = utcnow()
        with write_transaction(database_proxy.obj):
            held = WebhookEndpoint.select().where(WebhookEndpoint.operator_id == operator_id).count()
            if held >= MAX_ENDPOINTS:
                raise LimitReached(f"At most {MAX_ENDPOINTS} webhook endpoints per operator",
                                   code="webhook_limit_reached", details={"limit": MAX_ENDPOINTS})
            endpoint = WebhookEndpoint.create(
                id=uuid.uuid4(), operator_id=operator_id, url=url, description=description,
                event_types=json.dumps(_event_types(event_types)),
                secret_encrypted=encrypt_secret(self.secret_key, secret), enabled=True, inserted_at=now,
                updated_at=now)
        log.info("webhook endpoint %s created by operator %s", endpoint.id, operator_id)
        return endpoint, secret

    def endpoints(self, operator_id: str) -> list[WebhookEndpoint]:
        return list(WebhookEndpoint.select().where(WebhookEndpoint.operator_id == operator_id)
                    .order_by(WebhookEndpoint.inserted_at, WebhookEndpoint.id))

    def get(self, operator_id: str, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        endpoint = WebhookEndpoint.get_or_none(
            (WebhookEndpoint.id == endpoint_id) & (WebhookEndpoint.operator_id == operator_id))
        if endpoint is None:  # another operator's is not found either
            raise NotFound("Webhook endpoint not found", code="webhook_not_found")
        return endpoint

    def update(self, operator_id: str, endpoint_id: uuid.UUID, changes: dict[str, Any]) -> WebhookEndpoint:
        """Change url, event_types, description; ``enabled: true`` enables a disabled endpoint again."""
        if "url" in changes:
            check_url(changes["url"], self.allow_private)
        with write_transaction(database_proxy.obj):
            endpoint = self.get(operator_id, endpoint_id)
            if "url" in changes:
                endpoint.url = changes["url"]
            if "description" in changes:
                endpoint.description = changes["description"]
            if "event_types" in changes:
                endpoint.event_types = json.dumps(_event_types(changes["event_types"]))
            if "enabled" in changes:
                endpoint.enabled = bool(changes["enabled"])
                endpoint.disabled_reason = None if endpoint.enabled else "disabled by the operator"
                endpoint.failing_since = None
            endpoint.updated_at = utcnow()
            endpoint.save()
        return endpoint

    def delete(self, operator_id: str, endpoint_id: uuid.UUID) -> None:
        with write_transaction(database_proxy.obj):
            endpoint = self.get(operator_id, endpoint_id)
            WebhookDelivery.delete().where(WebhookDelivery.endpoint == endpoint.id).execute()
            endpoint.delete_instance()
        log.info("webhook endpoint %s deleted by operator %s", endpoint_id, operator_id)

    def deliveries(self, operator_id: str, endpoint_id: uuid.UUID, *, limit: int,
                   cursor: str | None) -> tuple[list[WebhookDelivery], str | None]:
        """A page, newest first, and the cursor of the next."""
        endpoint = self.get(operator_id, endpoint_id)
        query = (WebhookDelivery.select().where(WebhookDelivery.endpoint == endpoint.id)
                 .order_by(WebhookDelivery.inserted_at.desc(), WebhookDelivery.id.desc()))
        return pages.page(query, WebhookDelivery, cursor, limit, newest_first=True, parse_id=_delivery_id)


_DELIVERY_ID = re.compile(r"msg_[0-9a-f]{32}")


def _delivery_id(value: str) -> str:
    """A delivery's id in a cursor (ValueError for anything else)."""
    if not _DELIVERY_ID.fullmatch(value):
        raise ValueError("not a delivery id")
    return value


# --- events ---------------------------------------------------------------------------

_FINISHED = {
    (AuditAction.DEPLOY, True): WebhookEvent.DEPLOY_SUCCEEDED, (AuditAction.DEPLOY, False): WebhookEvent.DEPLOY_FAILED,
    (AuditAction.RESTART, True): WebhookEvent.RESTART_SUCCEEDED,
    (AuditAction.RESTART, False): WebhookEvent.RESTART_FAILED,
    (AuditAction.UPDATE, True): WebhookEvent.UPDATE_SUCCEEDED, (AuditAction.UPDATE, False): WebhookEvent.UPDATE_FAILED,
    (AuditAction.STOP, True): WebhookEvent.STOPPED, (AuditAction.DESTROY, True): WebhookEvent.DESTROYED,
    (AuditAction.SUSPEND, True): WebhookEvent.SUSPENDED, (AuditAction.REACTIVATE, True): WebhookEvent.REACTIVATED,
}
_HEALS = {"health", "container_exited", "drift"}


def events_of_entry(action: str, status: str, details: dict[str, Any]) -> list[WebhookEvent]:
    """The events an audit entry that just finished (completed or failed) reports."""
    if status not in {AuditStatus.COMPLETED, AuditStatus.FAILED}:
        return []
    ok = status == AuditStatus.COMPLETED
    reason = details.get("reason")
    if reason == "superseded":  # a later request's outcome is the one reported
        return []
    if reason == "crash_loop":
        return [WebhookEvent.CRASH_LOOP_PAUSED]
    if reason == "custom_domain":
        checked = str(details.get("custom_domain_status"))
        found = {"active": WebhookEvent.CUSTOM_DOMAIN_VERIFIED,
                 "misconfigured": WebhookEvent.CUSTOM_DOMAIN_MISCONFIGURED}.get(checked)
        return [found] if found else []
    if reason in _HEALS and ok:
        return [WebhookEvent.HEALED]
    if "rollback_to" in details:
        events = [WebhookEvent.ROLLBACK_SUCCEEDED if ok else WebhookEvent.ROLLBACK_FAILED]
    else:
        found = _FINISHED.get((action, ok))  # type: ignore[arg-type] # StrEnum keys: a str compares equal
        events = [found] if found else []
    if details.get("rolled_back"):
        events.append(WebhookEvent.ROLLED_BACK)
    return events


def emit(d: Deployment, event: WebhookEvent, data: dict[str, Any] | None = None) -> int:
    """One delivery per enabled endpoint of the deployment's operator that takes ``event``
    (in the caller's transaction); how many."""
    endpoints = [e for e in WebhookEndpoint.select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
        (WebhookEndpoint.operator_id == d.operator_id) & (WebhookEndpoint.enabled == True))  # noqa: E712
        if event in json.loads(e.event_types)]
    if not endpoints:
        return 0
    now = utcnow()
    payload = json.dumps({
        "type": str(event),
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": {"deployment_id": str(d.id), "subdomain": d.subdomain, "status": d.status,
                 "health_status": d.health_status, **(data or {})},
    }, separators=(",", ":"), sort_keys=True)
    WebhookDelivery.insert_many([
        {"id": f"msg_{uuid.uuid4().hex}", "endpoint": e.id, "event_type": str(event), "payload": payload,
         "state": DeliveryState.PENDING, "attempts": 0, "next_attempt_at": now, "inserted_at": now}
        for e in endpoints]).execute()
    return len(endpoints)


def emit_entry(d: Deployment, entry_id: Any, action: str, status: str, details: dict[str, Any]) -> None:
    """The events of an audit entry that just finished (services/state.py calls this)."""
    for event in events_of_entry(action, status, details):
        emit(d, event, {"action": action, "audit_entry_id": str(entry_id),
                        "message": details.get("message"), "reason": details.get("reason")})


# --- delivery (the worker) --------------------------------------------------------------

class Refused(Exception):
    """An attempt not made: the target resolves to an address that is not allowed."""


def resolve(url: str, allow_private: bool,
            lookup: Callable[..., list[Any]] = socket.getaddrinfo) -> str:
    """The address to connect to for ``url``: every address its name has must be allowed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = lookup(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refused(f"{host} does not resolve: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not address_allowed(address, allow_private):
            raise Refused(f"{host} resolves to {address}, which is not allowed")
    if not addresses:
        raise Refused(f"{host} has no address")
    return str(addresses[0])


def attempt(url: str, body: str, headers: dict[str, str], allow_private: bool,
            client: httpx.Client) -> tuple[int | None, str | None]:
    """One attempt: (status, None), or (status or None, why it failed)."""
    try:
        address = resolve(url, allow_private)
    except Refused as exc:
        return None, str(exc)
    parts = urlsplit(url)
    target = httpx.URL(url).copy_with(host=address)
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    try:
        with client.stream("POST", target, content=body.encode(), extensions=extensions,
                           headers={**headers, "Host": parts.netloc, "Content-Type": "application/json",
                                    "User-Agent": "buddo-deploy-webhooks/1"}) as response:
            status = response.status_code
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return status, None if 200 <= status < 300 else f"answered HTTP {status}"


def next_attempt_at(inserted_at: dt.datetime, attempts: int, failed_at: dt.datetime) -> dt.datetime | None:
    """When a delivery made at ``inserted_at`` is tried again after its ``attempts``-th attempt
    failed at ``failed_at``; None: never (its RETRY_FOR is over).

    The delay is the schedule's, but no later than RETRY_FOR after the event (when its first
    attempt was due): attempts on time end with one at exactly that moment."""
    deadline = inserted_at + RETRY_FOR
    if attempts > len(RETRY_SCHEDULE_S) or failed_at >= deadline:
        return None
    return min(failed_at + dt.timedelta(seconds=RETRY_SCHEDULE_S[attempts - 1]), deadline)


class Deliverer:
    """The worker's webhook timer: sends the due deliveries, a few at a time."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.secret_key = settings.secret_key
        self.allow_private = settings.webhook_allow_private
        self.clock = clock
        self.client = httpx.Client(timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False, trust_env=False)
        self.pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhook")

    def tick(self, limit: int = 50) -> int:
        """Claim what is due and send it; how many attempts were made."""
        claimed = self._claim(limit)
        list(self.pool.map(self._send, claimed))  # every send ends before the next tick claims more
        return len(claimed)

    def _claim(self, limit: int) -> list[WebhookDelivery]:
        now = self.clock()
        due = list(WebhookDelivery.select(WebhookDelivery.id, WebhookDelivery.next_attempt_at).where(
            (WebhookDelivery.state == DeliveryState.PENDING) & (WebhookDelivery.next_attempt_at <= now))
            .order_by(WebhookDelivery.next_attempt_at).limit(limit))
        claimed = []
        for row in due:
            took = WebhookDelivery.update(next_attempt_at=now + LEASE).where(
                (WebhookDelivery.id == row.id) & (WebhookDelivery.state == DeliveryState.PENDING)
                & (WebhookDelivery.next_attempt_at == row.next_attempt_at)).execute()
            if took:
                claimed.append(row.id)
        return list(WebhookDelivery.select(WebhookDelivery, WebhookEndpoint).join(WebhookEndpoint)
                    .where(WebhookDelivery.id.in_(claimed))) if claimed else []

    def _send(self, delivery: WebhookDelivery) -> None:
        endpoint = delivery.endpoint
        signed_at = dt.datetime.now(dt.UTC)  # the receiver checks it against its own clock
        status: int | None
        error: str | None
        if not endpoint.enabled:
            status, error = None, "the endpoint is disabled"
        else:
            secret = decrypt_secret(self.secret_key, endpoint.secret_encrypted, "a webhook secret")
            signature = Webhook(secret).sign(delivery.id, signed_at, delivery.payload)
            headers = {"webhook-id": delivery.id, "webhook-timestamp": str(int(signed_at.timestamp())),
                       "webhook-signature": signature}
            status, error = attempt(endpoint.url, delivery.payload, headers, self.allow_private, self.client)
        with database_proxy.obj.connection_context():
            self._record(delivery, endpoint, status, error)

    def _record(self, delivery: WebhookDelivery, endpoint: WebhookEndpoint, status: int | None,
                error: str | None) -> None:
        now = self.clock()
        attempts = delivery.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_attempt_at": now, "last_status": status,
                                  "last_error": error}
        with write_transaction(database_proxy.obj):
            if error is None:
                values |= {"state": DeliveryState.SUCCEEDED, "next_attempt_at": None}
                WebhookEndpoint.update(failing_since=None).where(WebhookEndpoint.id == endpoint.id).execute()
            else:
                later = next_attempt_at(delivery.inserted_at, attempts, now) if endpoint.enabled else None
                if later is None:
                    values |= {"state": DeliveryState.FAILED, "next_attempt_at": None}
                else:
                    values["next_attempt_at"] = later
                if endpoint.enabled:
                    self._failing(endpoint, now, error, delivery if later is None else None)
            WebhookDelivery.update(**values).where(WebhookDelivery.id == delivery.id).execute()
        log.info("webhook %s (%s) to endpoint %s: attempt %d %s", delivery.id, delivery.event_type,
                 endpoint.id, attempts, "succeeded" if error is None else f"failed: {error}")

    def _failing(self, endpoint: WebhookEndpoint, now: dt.datetime, error: str,
                 exhausted: WebhookDelivery | None) -> None:
        """Note the failure on the endpoint; disable it when it has failed for DISABLE_AFTER, or
        when ``exhausted`` (a delivery that failed every attempt of its schedule, the last
        RETRY_FOR after its event) finds no success to the endpoint since that event.

        The second catches an endpoint that hears of one event only: the delivery's last attempt
        comes RETRY_FOR after the event, a little less than DISABLE_AFTER after its first failure."""
        current = WebhookEndpoint.get_or_none(WebhookEndpoint.id == endpoint.id)
        if current is None:
            return
        since = current.failing_since or now
        if exhausted is not None and _delivered_since(endpoint, exhausted.inserted_at):
            exhausted = None
        if now - since < DISABLE_AFTER and exhausted is None:
            WebhookEndpoint.update(failing_since=since).where(WebhookEndpoint.id == endpoint.id).execute()
            return
        why = f"every attempt failed since {since.isoformat()}"
        if exhausted is not None:
            why += (f"; delivery {exhausted.id} failed every attempt in the {RETRY_FOR // dt.timedelta(hours=1)}"
                    " hours after its event")
        reason = f"{why}; the last: {error}"[:1000]
        WebhookEndpoint.update(enabled=False, disabled_reason=reason, updated_at=now).where(
            WebhookEndpoint.id == endpoint.id).execute()
        WebhookDelivery.update(state=DeliveryState.FAILED, next_attempt_at=None,
                               last_error="the endpoint was disabled").where(
            (WebhookDelivery.endpoint == endpoint.id) & (WebhookDelivery.state == DeliveryState.PENDING)).execute()
        log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def _delivered_since(endpoint: WebhookEndpoint, at: dt.datetime) -> bool:
    """Whether a delivery to the endpoint succeeded at or after ``at``."""
    return WebhookDelivery.select().where(
        (WebhookDelivery.endpoint == endpoint.id) & (WebhookDelivery.state == DeliveryState.SUCCEEDED)
        & (WebhookDelivery.last_attempt_at >= at)).exists()
