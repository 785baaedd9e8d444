"""Custom domains: verified before they are routed, and certificates only for verified ones.

A custom domain is ``pending`` until its DNS points at the app: a CNAME to
``<subdomain>.<base domain>``, or A/AAAA records that are all addresses of the
app's host (inventory host vars ``buddo_public_ipv4``/``buddo_public_ipv6``).
Then it is ``active`` (Caddy routes it and gets its certificate at the first
request) or, once it points elsewhere or vanishes, ``misconfigured`` (not
routed) until it is fixed. The worker checks each domain right after create and
every ``BUDDO_DOMAIN_CHECK_INTERVAL`` while the deployment is meant to run.

A change between routed (active) and not routed is a desired-state change
(``state.change``: new generation, converge job), recorded as a ``deploy``
audit entry with ``details.reason == "custom_domain"``; a change that does not
alter routing (pending -> misconfigured) is a completed entry of the same kind.

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

Verdict = Literal["points_here", "elsewhere", "missing", "unknown"]
BUDGET_WINDOW_S = 3600
_BATCH = 100


class LookupFailed(Exception):
    """The resolvers gave no answer (timeout, SERVFAIL): nothing can be concluded."""


class Resolver(Protocol):
    def records(self, name: str, rdtype: str) -> list[str]:
        """The record data of ``name``'s ``rdtype`` records (the CNAME chain followed); [] when none."""
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
        return [rr.to_text() for rr in answer.rrset] if answer.rrset is not None else []


@dataclass(frozen=True)
class Lookup:
    verdict: Verdict
    records: list[str] = field(default_factory=list)
    error: str | None = None


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def lookup(resolver: Resolver, domain: str, target: str, addresses: tuple[str, ...]) -> Lookup:
    """Where ``domain`` points: at ``target`` (CNAME) or only at ``addresses`` (A/AAAA), or not."""
    try:
        cnames = [name.rstrip(".").lower() for name in resolver.records(domain, "CNAME")]
        if target in cnames:
            return Lookup("points_here", [f"CNAME {target}"])
        found = [*resolver.records(domain, "A"), *resolver.records(domain, "AAAA")]
    except LookupFailed as exc:
        return Lookup("unknown", error=str(exc))
    records = [f"CNAME {name}" for name in cnames] + [f"A/AAAA {a}" for a in found]
    mine = {str(ipaddress.ip_address(a)) for a in addresses}
    if found and mine and all(_address(a) in mine for a in found):
        return Lookup("points_here", records)
    return Lookup("elsewhere" if records else "missing", records)


def next_status(current: str, verdict: Verdict) -> str:
    if verdict == "points_here":
        return "active"
    if verdict == "unknown" or (verdict == "missing" and current == "pending"):
        return current  # not verified yet (or no answer): nothing changes
    return "misconfigured"


class DomainChecker:
    """The worker's periodic check of every custom domain of a deployment that should run."""

    def __init__(self, base_domain: str, interval_s: float, timeout_s: int, resolver: Resolver,
                 host_addresses: Callable[[str], tuple[str, ...]]) -> None:
        self.base_domain = base_domain
        self.interval = dt.timedelta(seconds=interval_s)
        self.timeout_s = timeout_s
        self.resolver = resolver
        self.host_addresses = host_addresses

    def due(self, now: dt.datetime) -> list[Deployment]:
        checked = Deployment.custom_domain_checked_at
        return list(
            Deployment.select(Deployment.id, Deployment.custom_domain, Deployment.subdomain, Deployment.host)
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
                           self.host_addresses(row.host))
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
                   "message": _MESSAGES[after].format(domain=domain, target=f"{d.subdomain}.{self.base_domain}")}
        log.info("custom domain %r of %s: %s -> %s", domain, d.id, before, after)
        if (before == "active") != (after == "active"):
            # Routing changes: the engine converges the Caddy site to the new generation.
            state.change(d, "deploy", None, timeout_s=self.timeout_s, details=details,
                         custom_domain_status=after, custom_domain_checked_at=now)
        else:
            Deployment.update(custom_domain_status=after, custom_domain_checked_at=now, updated_at=now).where(
                Deployment.id == d.id).execute()
            state.audit(d, "deploy", "completed", None, details=details)
        return after


_MESSAGES = {
    "active": "{domain} points at the app: routed, certificate at the first request",
    "misconfigured": "{domain} does not point at the app (CNAME to {target} expected): not routed",
    "pending": "{domain}: waiting for its DNS record",
}


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
