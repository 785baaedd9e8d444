"""A deployment's status conditions (Kubernetes-style), derived from its row in one place.

Each condition says one thing about the deployment and why (``reason``, CamelCase; ``message``
for people). They are computed when the deployment is shown, from the columns that already
hold the desired and observed state, health, billing and the custom domain's check; nothing
stores them. ``observed_generation`` is the generation the host has converged to: what the
observed half of the row describes.

``last_transition_time`` is given only where a column records when the condition last changed
status: ``custom_domain_unverified_since`` for DomainVerified False. Elsewhere the row keeps no
such time (the audit log has the history), so the field is left out rather than guessed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..models import Deployment
from ..vocabulary import (
    BillingStatus,
    ConditionStatus,
    ConditionType,
    CustomDomainStatus,
    DeploymentStatus,
    DesiredState,
    Health,
)

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str
    observed_generation: int
    last_transition_time: dt.datetime | None = None


def conditions(d: Deployment) -> list[Condition]:
    """Ready, Progressing, Degraded, Suspended and (with a custom domain claim) DomainVerified."""
    found = [ready(d), progressing(d), degraded(d), suspended(d)]
    domain = domain_verified(d)
    if domain is not None:
        found.append(domain)
    return found


def _condition(d: Deployment, kind: ConditionType, status: ConditionStatus, reason: str, message: str,
               since: dt.datetime | None = None) -> Condition:
    return Condition(kind, status, reason, message, d.observed_generation, since)


def _serving(d: Deployment) -> bool:
    return d.serving_port is not None


def _failed(d: Deployment) -> bool:
    """The latest convergence of the current generation failed."""
    return d.failed_generation is not None and d.failed_generation == d.generation


def ready(d: Deployment) -> Condition:
    """True while a container of the deployment serves and its health probe does not fail."""
    kind = ConditionType.READY
    if d.desired_state == DesiredState.ABSENT:
        return _condition(d, kind, FALSE, "Destroyed", "the deployment is destroyed")
    if d.desired_state == DesiredState.STOPPED:
        if d.billing_status == BillingStatus.SUSPENDED:
            return _condition(d, kind, FALSE, "Suspended", "stopped by billing until the account is paid")
        return _condition(d, kind, FALSE, "Stopped", "the deployment is stopped")
    if not _serving(d):
        if d.status == DeploymentStatus.FAILED or _failed(d):
            return _condition(d, kind, FALSE, "DeployFailed",
                              f"generation {d.generation} failed to come up; the audit log says why")
        if d.status == DeploymentStatus.PENDING:
            return _condition(d, kind, FALSE, "Pending", "no worker has started the deployment yet")
        return _condition(d, kind, FALSE, "Deploying", "the container is being pulled and started")
    if d.health_status == Health.UNHEALTHY:
        return _condition(d, kind, FALSE, "Unhealthy", "the container serves but its health probe fails")
    return _condition(d, kind, TRUE, "Running", "the container serves")


def progressing(d: Deployment) -> Condition:
    """True while the host is behind the desired generation and the latest attempt has not failed."""
    kind = ConditionType.PROGRESSING
    if d.observed_generation >= d.generation:
        return _condition(d, kind, FALSE, "Converged", f"the host has converged to generation {d.generation}")
    if _failed(d):
        return _condition(d, kind, FALSE, "ConvergeFailed",
                          f"converging to generation {d.generation} failed; the audit log says why")
    return _condition(d, kind, TRUE, "Converging",
                      f"converging from generation {d.observed_generation} to {d.generation}")


def degraded(d: Deployment) -> Condition:
    """True when a deployment that should run does not as it should: its convergence or its health fails."""
    kind = ConditionType.DEGRADED
    if d.desired_state != DesiredState.RUNNING:
        return _condition(d, kind, FALSE, "NotRunning", f"the deployment is meant to be {d.desired_state}")
    if _failed(d):
        return _condition(d, kind, TRUE, "ConvergeFailed",
                          f"converging to generation {d.generation} failed; the audit log says why")
    if d.health_status == Health.UNHEALTHY:
        return _condition(d, kind, TRUE, "Unhealthy", "the health probe fails")
    return _condition(d, kind, FALSE, "AsExpected", "no failure")


def suspended(d: Deployment) -> Condition:
    """True while billing holds the deployment stopped for an unpaid cycle."""
    kind = ConditionType.SUSPENDED
    if d.billing_status == BillingStatus.SUSPENDED:
        return _condition(d, kind, TRUE, "PaymentOverdue",
                          "a billing cycle was not paid in time; a payment reactivates the deployment")
    if d.billing_status == BillingStatus.PAST_DUE:
        return _condition(d, kind, FALSE, "PastDue", "a billing cycle is unpaid; still running in the grace period")
    if d.billing_status == BillingStatus.CANCELLED:
        return _condition(d, kind, FALSE, "Cancelled", "billing ended with the deployment")
    return _condition(d, kind, FALSE, "BillingActive", "billing is in good standing")


def domain_verified(d: Deployment) -> Condition | None:
    """The custom domain claim's DNS proof; None without a custom domain (or a claim that expired)."""
    kind = ConditionType.DOMAIN_VERIFIED
    status = d.custom_domain_status
    if d.custom_domain is None:
        if status == CustomDomainStatus.EXPIRED:
            return _condition(d, kind, FALSE, "ClaimExpired",
                              "the custom domain was not verified in time: the claim was released")
        return None
    domain = d.custom_domain
    since = d.custom_domain_unverified_since
    if status == CustomDomainStatus.ACTIVE:
        return _condition(d, kind, TRUE, "Verified", f"{domain} is verified by its DNS and routed")
    if status == CustomDomainStatus.PENDING:
        return _condition(d, kind, FALSE, "AwaitingProof",
                          f"{domain} is not verified yet: add the record custom_domain_verification shows", since)
    if status == CustomDomainStatus.MISCONFIGURED:
        return _condition(d, kind, FALSE, "ProofMissing",
                          f"the DNS proof of {domain} is gone: not routed until it is back", since)
    return _condition(d, kind, UNKNOWN, "NotChecked", f"{domain} has not been checked yet")
