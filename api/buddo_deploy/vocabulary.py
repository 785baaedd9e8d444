"""The platform's vocabulary: every closed set of values a column, a job or the API uses.

The shared leaf of the package: it imports only the standard library, so ``models``
(peewee only) and ``schemas`` (pydantic only) both import it and say the same words.
The members are ``str`` (StrEnum): they compare equal to, hash like and serialize as
the strings the database rows and JSON documents hold, so the values themselves
(and the contract's statuses) are exactly what they were.
"""

from __future__ import annotations

from enum import StrEnum


class DesiredState(StrEnum):
    """What a deployment should be (the API, billing and health verdicts set it)."""

    RUNNING = "running"
    STOPPED = "stopped"
    ABSENT = "absent"


class DeploymentStatus(StrEnum):
    """The contract's status, derived from desired and observed state (services/state.py)."""

    PENDING = "pending"
    DEPLOYING = "deploying"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DESTROYED = "destroyed"


class Health(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class JobKind(StrEnum):
    """``Job.action``: converge one deployment, reconcile a host, read an app's output."""

    CONVERGE = "converge"
    RECONCILE = "reconcile"
    OUTPUT = "output"
    RUN = "run"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AuditAction(StrEnum):
    """The contract's audit log actions."""

    CREATE = "create"
    DEPLOY = "deploy"
    STOP = "stop"
    RESTART = "restart"
    DESTROY = "destroy"
    SUSPEND = "suspend"
    REACTIVATE = "reactivate"
    UPDATE = "update"
    RUN = "run"


class AuditStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class BillingStatus(StrEnum):
    ACTIVE = "active"
    PAST_DUE = "past_due"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"


class BillingTrack(StrEnum):
    """How a tier is paid (``Tier.payment_method``), and the track of a cycle or ledger entry."""

    BUDDO_POINTS = "buddo_points"
    BITCOIN = "bitcoin"


class LedgerKind(StrEnum):
    CHARGE = "charge"
    STIPEND = "stipend"
    CREDIT = "credit"
    ADJUSTMENT = "adjustment"


class CycleState(StrEnum):
    UNPAID = "unpaid"
    PAID = "paid"
    # Only cycles of deployments destroyed before a destroy stopped waiving what they owed;
    # nothing writes it now (a started cycle stays unpaid until a credit pays it).
    WAIVED = "waived"


class CustomDomainStatus(StrEnum):
    """The custom domain's DNS check (services/domains.py); the column is null without a custom domain."""

    PENDING = "pending"
    ACTIVE = "active"
    MISCONFIGURED = "misconfigured"
    # The claim was released (custom_domain is null again; the audit log names the domain).
    EXPIRED = "expired"


class ConditionType(StrEnum):
    """The types of a deployment's status conditions (services/conditions.py)."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    DOMAIN_VERIFIED = "DomainVerified"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class WebhookEvent(StrEnum):
    """The event types an operator's webhook endpoint may choose (services/webhooks.py)."""

    DEPLOY_SUCCEEDED = "deploy.succeeded"
    DEPLOY_FAILED = "deploy.failed"
    RESTART_SUCCEEDED = "restart.succeeded"
    RESTART_FAILED = "restart.failed"
    UPDATE_SUCCEEDED = "update.succeeded"
    UPDATE_FAILED = "update.failed"
    ROLLBACK_SUCCEEDED = "rollback.succeeded"
    ROLLBACK_FAILED = "rollback.failed"
    # A new version that never answered: the one before it keeps serving (automatic rollback).
    ROLLED_BACK = "deployment.rolled_back"
    UNHEALTHY = "deployment.unhealthy"
    HEALED = "deployment.healed"
    CRASH_LOOP_PAUSED = "deployment.crash_loop_paused"
    STOPPED = "deployment.stopped"
    SUSPENDED = "deployment.suspended"
    REACTIVATED = "deployment.reactivated"
    DESTROYED = "deployment.destroyed"
    CUSTOM_DOMAIN_VERIFIED = "custom_domain.verified"
    CUSTOM_DOMAIN_MISCONFIGURED = "custom_domain.misconfigured"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RunState(StrEnum):
    """A one-off run: queued, running, then how it ended (services/runs.py)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # exit code 0
    FAILED = "failed"  # another exit code
    TIMED_OUT = "timed_out"  # stopped at its timeout
    ERROR = "error"  # it never ran (the image, the host)


FINISHED_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.ERROR})
