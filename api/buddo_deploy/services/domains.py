"""Custom domains: a claim is verified by its DNS before it is routed, and expires if it never is.

A custom domain is ``pending`` until its DNS proves the claim, one of:
- a CNAME to the deployment's own name ``<subdomain>.<base domain>``;
- a TXT record ``_buddo-challenge.<domain>`` holding ``buddo-verify=<token>``, the
  token generated for this claim (shown on the deployment).
An A or AAAA record to the host proves nothing: every tenant shares the host's
address, so a name pointed at the platform for one app could be claimed by another.

Verified, it is ``active`` (Caddy routes it and gets its certificate at the first
request); once the proof is gone, ``misconfigured`` (not routed) until it is back.
The worker checks each domain right after create and every
``BUDDO_DOMAIN_CHECK_INTERVAL`` while the deployment is meant to run.

A claim that is not verified for ``BUDDO_DOMAIN_CLAIM_EXPIRY`` (since it was made,
or since it was last verified) is released: ``custom_domain`` cleared, status
``expired``, an audit entry. Until then nobody else may claim the domain; after, its
owner may (a create releases an expired claim on the spot, the worker sweeps the rest).

A change between routed (active) and not routed is a desired-state change
(``state.change``: new generation, converge job), recorded as a ``deploy``
audit entry with ``details.reason == "custom_domain"``; a change that does not
alter routing (pending -> misconfigured, a release) is a completed entry of the same kind.

Caddy's on-demand TLS asks :func:`approve_certificate` before issuing (and, in newer
versions, again on renewals and restarts): only an active domain of a live
deployment; the first approval of a claim spends the issuance budget, later ones
nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import dns.exception
import dns.nameserver
import dns.resolver

from ..db import write_transaction
from ..models import Deployment, RateLimitCounter, database_proxy, utcnow
from . import state

log = logging.getLogger(__name__)

Verdict = Literal["verified", "unproved", "missing", "unknown"]
BUDGET_WINDOW_S = 3600
CHALLENGE_LABEL = "_buddo-challenge"
CHALLENGE_PREFIX = "buddo-verify="
MAX_NAME = 253  # characters of a DNS name in text, without the final dot
_BATCH = 100


def new_token() -> str:
    """A claim's verification token: 128 random bits, hex (as migration 0015 makes them)."""
    return secrets.token_hex(16)


def challenge_name(domain: str) -> str:
    return f"{CHALLENGE_LABEL}.{domain}"


def challenge_value(token: str) -> str:
    return f"{CHALLENGE_PREFIX}{token}"


def verification_records(domain: str | None, token: str | None, target: str) -> dict[str, Any] | None:
    """What the operator creates at their DNS provider: the TXT record, or the CNAME instead."""
    if not domain or not token:
        return None
    return {"type": "TXT", "name": challenge_name(domain), "value": challenge_value(token),
            "alternatives": [{"type": "CNAME", "name": domain, "value": target}]}


class LookupFailed(Exception):
    """The resolvers gave no answer (timeout, SERVFAIL): nothing can be concluded."""


class Resolver(Protocol):
    def records(self, name: str, rdtype: str) -> list[str]:
        """The record data of ``name``'s ``rdtype`` records (the CNAME chain followed; a TXT
        record's strings joined, unquoted); [] when none."""
        ...


def _nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    """"ip", "ip:port" or "[ipv6]:port"."""
    host, port = spec, 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = int(rest.lstrip(":") or 53)
    elif spec.count(":") == 1:
        host, _, text = spec.partition(":")
        port = int(text)
    return dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(host)), port)


def _rdata_text(rdata: Any, rdtype: str) -> str:
    if rdtype == "TXT":  # one value split in strings of at most 255 bytes (RFC 7208 3.3)
        return b"".join(rdata.strings).decode("utf-8", errors="replace")
    return str(rdata.to_text())


class DnsResolver:
    """dnspython's stub resolver on the configured nameservers (none: /etc/resolv.conf)."""

    def __init__(self, nameservers: tuple[str, ...] = (), timeout_s: float = 5.0) -> None:
        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [_nameserver(spec) for spec in nameservers]
        else:
            self._resolver = dns.resolver.Resolver()
        self._resolver.lifetime = timeout_s

    def records(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = self._resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        return [_rdata_text(rr, rdtype) for rr in answer.rrset] if answer.rrset is not None else []


@dataclass(frozen=True)
class Lookup:
    verdict: Verdict
    records: list[str] = field(default_factory=list)
    error: str | None = None
    # How it was verified (cname, txt); or, unproved, whether its A/AAAA records all are the host's.
    proof: str | None = None
    at_host: bool = False


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def lookup(resolver: Resolver, domain: str, target: str, token: str | None,
           addresses: tuple[str, ...] = ()) -> Lookup:
    """Whether ``domain``'s DNS proves the claim: a CNAME to ``target`` or the claim's TXT token.

    A/AAAA records are looked up only to explain an unproved claim (they point at the
    host, or not); they never verify one.
    """
    try:
        cnames = [name.rstrip(".").lower() for name in resolver.records(domain, "CNAME")]
        if target in cnames:
            return Lookup("verified", [f"CNAME {target}"], proof="cname")
        # A name near the 253-character limit has no room for the challenge label: CNAME only.
        challenge = challenge_name(domain)
        texts = ([t for t in resolver.records(challenge, "TXT") if t.startswith(CHALLENGE_PREFIX)]
                 if len(challenge) <= MAX_NAME else [])
        if token and challenge_value(token) in texts:
            return Lookup("verified", [f"TXT {challenge_value(token)}"], proof="txt")
        found = [*resolver.records(domain, "A"), *resolver.records(domain, "AAAA")]
    except LookupFailed as exc:
        return Lookup("unknown", error=str(exc))
    records = [f"CNAME {name}" for name in cnames] + [f"TXT {t}" for t in texts] + [f"A/AAAA {a}" for a in found]
    mine = {str(ipaddress.ip_address(a)) for a in addresses}
    at_host = bool(found and mine and all(_address(a) in mine for a in found))
    return Lookup("unproved" if records else "missing", records, at_host=at_host)


def next_status(current: str, verdict: Verdict) -> str:
    if verdict == "verified":
        return "active"
    if verdict == "unknown" or (verdict == "missing" and current == "pending"):
        return current  # not verified yet (or no answer): nothing changes
    return "misconfigured"


def _hours(expiry: dt.timedelta) -> str:
    hours = expiry.total_seconds() / 3600
    return f"{hours:g} h"


class DomainChecker:
    """The worker's periodic check of every custom domain of a deployment that should run,
    and the sweep that releases the claims that expired."""

    def __init__(self, base_domain: str, interval_s: float, timeout_s: int, resolver: Resolver,
                 host_addresses: Callable[[str], tuple[str, ...]], claim_expiry_s: float = 72 * 3600) -> None:
        self.base_domain = base_domain
        self.interval = dt.timedelta(seconds=interval_s)
        self.timeout_s = timeout_s
        self.resolver = resolver
        self.host_addresses = host_addresses
        self.claim_expiry = dt.timedelta(seconds=claim_expiry_s)

    def due(self, now: dt.datetime) -> list[Deployment]:
        checked = Deployment.custom_domain_checked_at
        return list(
            Deployment.select(Deployment.id, Deployment.custom_domain, Deployment.subdomain, Deployment.host,
                              Deployment.custom_domain_token)
            .where(Deployment.custom_domain.is_null(False) & Deployment.released_at.is_null()
                   & (Deployment.desired_state == "running")
                   & (checked.is_null() | (checked <= now - self.interval)))
            .order_by(checked.asc(nulls="FIRST"), Deployment.id)
            .limit(_BATCH)
        )

    def check_due(self) -> dict[str, str]:
        """Check the domains that are due; deployment id -> status after the check."""
        statuses: dict[str, str] = {}
        for row in self.due(utcnow()):
            domain = str(row.custom_domain)
            # DNS outside the transaction: a slow resolver must not hold the write lock.
            found = lookup(self.resolver, domain, f"{row.subdomain}.{self.base_domain}".lower(),
                           row.custom_domain_token, self.host_addresses(row.host))
            with write_transaction(database_proxy.obj):
                status = self.record(row.id, domain, found)
            if status is not None:
                statuses[str(row.id)] = status
        return statuses

    def record(self, deployment_id: object, domain: str, found: Lookup) -> str | None:
        d = state.locked(deployment_id)
        if d is None or d.custom_domain != domain or d.desired_state != "running" or d.released_at is not None:
            return None  # changed while DNS was asked
        now = utcnow()
        before = d.custom_domain_status or "pending"
        after = next_status(before, found.verdict)
        if found.error:
            log.warning("custom domain %r of %s: DNS lookup failed: %s", domain, d.id, found.error)
        if after == before:
            Deployment.update(custom_domain_checked_at=now).where(Deployment.id == d.id).execute()
            return after
        details = {"reason": "custom_domain", "custom_domain": domain, "custom_domain_status": after,
                   "previous_status": before, "records": found.records,
                   "message": self._message(d, domain, after, found)}
        # The expiry clock: stopped while verified, running from the moment it is not.
        values: dict[str, Any] = {"custom_domain_status": after, "custom_domain_checked_at": now}
        if after == "active":
            values["custom_domain_unverified_since"] = None
        elif before == "active":
            values["custom_domain_unverified_since"] = now
        log.info("custom domain %r of %s: %s -> %s", domain, d.id, before, after)
        if (before == "active") != (after == "active"):
            # Routing changes: the engine converges the Caddy site to the new generation.
            state.change(d, "deploy", None, timeout_s=self.timeout_s, details=details, **values)
        else:
            Deployment.update(**values, updated_at=now).where(Deployment.id == d.id).execute()
            state.audit(d, "deploy", "completed", None, details=details)
        return after

    def _message(self, d: Deployment, domain: str, status: str, found: Lookup) -> str:
        if status == "active":
            how = "its CNAME to the app" if found.proof == "cname" else "its TXT record"
            return f"{domain} is verified by {how}: routed, certificate at the first request"
        target = f"{d.subdomain}.{self.base_domain}"
        expected = (f"a CNAME to {target}, or the TXT record {challenge_name(domain)} = "
                    f"{challenge_value(d.custom_domain_token or '')}")
        hint = " (its A/AAAA records point at the host, which proves no ownership)" if found.at_host else ""
        return (f"{domain} is not verified{hint}: {expected} expected; not routed, and released "
                f"{_hours(self.claim_expiry)} after it was last verified (or claimed) unless verified")

    def expire_due(self, now: dt.datetime | None = None) -> dict[str, str]:
        """Release the claims unverified for longer than the expiry; deployment id -> domain released."""
        now = now or utcnow()
        since = Deployment.custom_domain_unverified_since
        rows = list(
            Deployment.select(Deployment.id, Deployment.custom_domain)
            .where(Deployment.custom_domain.is_null(False) & Deployment.released_at.is_null()
                   & (Deployment.custom_domain_status != "active")
                   & since.is_null(False) & (since <= now - self.claim_expiry))
            .order_by(since, Deployment.id)
            .limit(_BATCH)
        )
        released: dict[str, str] = {}
        for row in rows:
            with write_transaction(database_proxy.obj):
                d = state.locked(row.id)
                if d is not None and release_if_expired(d, self.claim_expiry, now):
                    released[str(row.id)] = str(row.custom_domain)
        return released


def release_if_expired(d: Deployment, expiry: dt.timedelta, now: dt.datetime | None = None) -> bool:
    """Release the custom domain of a locked row whose claim expired: cleared, ``expired``, audited.

    Only a claim that is not active: it is not routed, so nothing on a host changes.
    Call inside a write transaction.
    """
    now = now or utcnow()
    since = d.custom_domain_unverified_since
    if (d.custom_domain is None or d.released_at is not None or d.custom_domain_status == "active"
            or since is None or since > now - expiry):
        return False
    domain, before = d.custom_domain, d.custom_domain_status or "pending"
    Deployment.update(custom_domain=None, custom_domain_status="expired", custom_domain_token=None,
                      custom_domain_unverified_since=None, custom_domain_approved_at=None,
                      custom_domain_checked_at=now, updated_at=now).where(Deployment.id == d.id).execute()
    message = (f"{domain} was not verified for {_hours(expiry)}: released, so that whoever controls its DNS "
               "may claim it")
    state.audit(d, "deploy", "completed", None, details={
        "reason": "custom_domain", "custom_domain": domain, "custom_domain_status": "expired",
        "previous_status": before, "message": message})
    log.info("custom domain %r of %s: %s -> expired (released)", domain, d.id, before)
    return True


def release_expired_claim(domain: str, expiry_s: float, now: dt.datetime | None = None) -> bool:
    """Release ``domain``'s claim if it expired, so that a create may take it (in its write transaction)."""
    holder = Deployment.select(Deployment.id).where(
        (Deployment.custom_domain == domain) & Deployment.released_at.is_null()).first()
    if holder is None:
        return False
    d = state.locked(holder.id)
    return d is not None and release_if_expired(d, dt.timedelta(seconds=expiry_s), now)


# --- on-demand TLS -------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    approved: bool
    code: str = "approved"
    message: str = ""
    # Whether this approval spent the issuance budget (the claim's first).
    spent: bool = False


def _spend(key: str, window_start: int) -> int:
    return RateLimitCounter.hit(key, window_start)


def _refusal(name: str, status: str | None) -> Decision:
    if status is None:
        return Decision(False, "domain_not_bound", f"No live deployment is bound to {name!r}")
    return Decision(False, "domain_not_verified", f"{name!r} is {status}: its DNS does not prove the claim")


def approve_certificate(domain: str, per_domain: int, per_hour: int, now: float | None = None) -> Decision:
    """May Caddy obtain a certificate for ``domain`` now?

    Only for an active custom domain of a live deployment. The first approval of a claim
    is an issuance attempt and spends the hour's budget (``per_domain`` for the name,
    ``per_hour`` for all): a burst of new names stops at the budget instead of at the ACME
    account's rate limits. Every later ask for the same claim (Caddy asking again while it
    obtains, on renewal, after a restart) costs nothing, so asks for names that already
    have a certificate cannot exhaust the budget that new names need.
    """
    name = domain.lower()
    clock = time.time() if now is None else now
    row = (Deployment.select(Deployment.id, Deployment.custom_domain_status, Deployment.custom_domain_approved_at)
           .where((Deployment.custom_domain == name) & (Deployment.status != "destroyed")
                  & Deployment.released_at.is_null()).first())
    if row is None or row.custom_domain_status != "active":
        decision = _refusal(name, None if row is None else row.custom_domain_status)
    elif row.custom_domain_approved_at is not None:
        decision = Decision(True)
    else:
        with write_transaction(database_proxy.obj):
            decision = _first_approval(row.id, name, per_domain, per_hour, clock)
    if not decision.approved:
        log.warning("on-demand certificate refused: %s", json.dumps({"domain": name, "code": decision.code}))
    return decision


def _first_approval(deployment_id: Any, name: str, per_domain: int, per_hour: int, clock: float) -> Decision:
    """Spend the budget for a claim's first approval, once: the row lock orders concurrent asks."""
    d = state.locked(deployment_id)
    if d is None or d.custom_domain != name or d.status == "destroyed" or d.released_at is not None:
        return _refusal(name, None)
    if d.custom_domain_status != "active":
        return _refusal(name, d.custom_domain_status)
    if d.custom_domain_approved_at is not None:
        return Decision(True)  # another ask approved it meanwhile
    window_start = int(clock // BUDGET_WINDOW_S * BUDGET_WINDOW_S)
    if _spend(f"certificate|{name}", window_start) > per_domain:
        return Decision(False, "certificate_budget_exhausted",
                        f"{per_domain} certificate requests for {name!r} this hour")
    if _spend("certificate|*", window_start) > per_hour:
        return Decision(False, "certificate_budget_exhausted",
                        f"{per_hour} certificate requests for all domains this hour")
    approved_at = dt.datetime.fromtimestamp(clock, dt.UTC).replace(tzinfo=None)
    Deployment.update(custom_domain_approved_at=approved_at).where(Deployment.id == d.id).execute()
    return Decision(True, spent=True)
