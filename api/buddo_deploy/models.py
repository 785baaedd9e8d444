"""Peewee models. The schema itself is owned by the numbered migrations.

Closed sets of values come from ``vocabulary`` (stdlib only; schemas uses the same enums).
Their ``choices`` document a column; the database does not check them.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from enum import StrEnum
from typing import Any

import peewee

from .vocabulary import (
    AuditAction,
    AuditStatus,
    BillingStatus,
    BillingTrack,
    CustomDomainStatus,
    CycleState,
    DeploymentStatus,
    DesiredState,
    Health,
    JobKind,
    JobState,
    LedgerKind,
)

database_proxy = peewee.DatabaseProxy()

COUNTER_RETENTION_S = 86400


def choices(values: type[StrEnum]) -> list[tuple[str, str]]:
    """A peewee field's ``choices`` from a vocabulary enum."""
    return [(member.value, member.value) for member in values]


def utcnow() -> dt.datetime:
    """Naive UTC, the one representation stored in every backend."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class TextUUIDField(peewee.CharField):
    """UUIDs stored as canonical text so SQLite and PostgreSQL agree byte for byte."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 36)
        super().__init__(**kwargs)

    def db_value(self, value: Any) -> str | None:
        return None if value is None else str(uuid.UUID(str(value)))

    def python_value(self, value: Any) -> uuid.UUID | None:
        return None if value is None else uuid.UUID(str(value))


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Tier(BaseModel):
    id = TextUUIDField(primary_key=True)
    slug = peewee.CharField(unique=True)
    name = peewee.CharField()
    payment_method = peewee.CharField(choices=choices(BillingTrack))
    monthly_cost_points = peewee.IntegerField(null=True)
    monthly_cost_sats = peewee.IntegerField(null=True)
    memory_limit_mb = peewee.IntegerField()
    cpu_limit_millicores = peewee.IntegerField()
    custom_domain_allowed = peewee.BooleanField()
    monthly_stipend_points = peewee.IntegerField()
    ad_reach_multiplier = peewee.FloatField()
    max_deployments = peewee.IntegerField()
    position = peewee.IntegerField(default=0)
    # Caps of each container (migration 0004): processes, and the size its log file may reach.
    pids_limit = peewee.IntegerField(default=128)
    log_max_size_mb = peewee.IntegerField(default=10)
    # What its container may write (migration 0011).
    disk_limit_mb = peewee.IntegerField(default=1024)

    class Meta:
        table_name = "tiers"


class Deployment(BaseModel):
    id = TextUUIDField(primary_key=True)
    operator_id = peewee.CharField(index=True)
    app_id = peewee.CharField()
    tier = peewee.ForeignKeyField(Tier, column_name="deploy_tier_id", object_id_name="tier_id", backref="deployments")
    tier_id: uuid.UUID
    container_name = peewee.CharField()
    container_image = peewee.CharField()
    subdomain = peewee.CharField()
    custom_domain = peewee.CharField(null=True)
    port = peewee.IntegerField()
    host = peewee.CharField()
    host_port = peewee.IntegerField()
    status = peewee.CharField(choices=choices(DeploymentStatus))
    health_status = peewee.CharField(default=Health.UNKNOWN, choices=choices(Health))
    last_health_check = peewee.DateTimeField(null=True)
    billing_status = peewee.CharField(default=BillingStatus.ACTIVE, choices=choices(BillingStatus))
    next_billing_at = peewee.DateTimeField()
    memory_limit_mb = peewee.IntegerField()
    cpu_limit_millicores = peewee.IntegerField()
    env_var_names = peewee.TextField(default="[]")
    env_vars_encrypted = peewee.TextField(null=True)
    image_digest = peewee.CharField(null=True)
    inserted_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    destroyed_at = peewee.DateTimeField(null=True)
    # Desired state (what the API, billing and health verdicts ask for) ...
    desired_state = peewee.CharField(default=DesiredState.RUNNING, choices=choices(DesiredState))
    generation = peewee.IntegerField(default=1)
    revision = peewee.IntegerField(default=1)
    # A restart's revision: its start pulls the image's tag as it is now (state.desired_item).
    pull_revision = peewee.IntegerField(default=0)
    # The operator's health check (JSON, migration 0021); NULL: the platform's defaults.
    health_check = peewee.TextField(null=True)
    # ... and how far the host has converged to it.
    observed_generation = peewee.IntegerField(default=0)
    observed_revision = peewee.IntegerField(default=0)
    failed_generation = peewee.IntegerField(null=True)
    serving_port = peewee.IntegerField(null=True)
    container_id = peewee.CharField(null=True)
    health_failures = peewee.IntegerField(default=0)
    released_at = peewee.DateTimeField(null=True)
    # The custom domain's DNS check (services/domains.py); null without a custom domain.
    custom_domain_status = peewee.CharField(null=True, choices=choices(CustomDomainStatus))
    custom_domain_checked_at = peewee.DateTimeField(null=True)
    # When the ask endpoint first approved a certificate for the claim (migration 0014): asks
    # after that spend no issuance budget.
    custom_domain_approved_at = peewee.DateTimeField(null=True)
    # The claim's proof of ownership (migration 0015): the TXT record _buddo-challenge.<domain>
    # holds buddo-verify=<token>. Since when the claim is not verified (null while active): it
    # is released once that is longer ago than BUDDO_DOMAIN_CLAIM_EXPIRY.
    custom_domain_token = peewee.CharField(null=True)
    custom_domain_unverified_since = peewee.DateTimeField(null=True)
    # The number of the next billing cycle to start (at next_billing_at).
    billing_cycle = peewee.IntegerField(default=0)
    # A rollback's image digest: the container runs <repository>@<digest> (null: the tag).
    pinned_digest = peewee.CharField(null=True)

    class Meta:
        table_name = "deployments"


class AuditEntry(BaseModel):
    id = TextUUIDField(primary_key=True)
    deployment = peewee.ForeignKeyField(Deployment, backref="audit_entries")
    action = peewee.CharField(choices=choices(AuditAction))
    status = peewee.CharField(choices=choices(AuditStatus))
    initiated_by = peewee.CharField(null=True)
    details = peewee.TextField(null=True)
    inserted_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    generation = peewee.IntegerField(null=True)
    job_id = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "audit_entries"


class Job(BaseModel):
    id = peewee.AutoField()
    deployment = peewee.ForeignKeyField(Deployment, backref="jobs", null=True)
    # Foreign-key id accessor peewee adds (declared for the type checker only).
    deployment_id: uuid.UUID | None
    action = peewee.CharField(choices=choices(JobKind))
    lock_key = peewee.CharField()
    state = peewee.CharField(default=JobState.QUEUED, choices=choices(JobState))
    attempts = peewee.IntegerField(default=0)
    timeout_s = peewee.IntegerField()
    run_after = peewee.DateTimeField()
    lease_owner = peewee.CharField(null=True)
    lease_expires_at = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(null=True)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    finished_at = peewee.DateTimeField(null=True)
    # When the latest attempt was claimed.
    started_at = peewee.DateTimeField(null=True)
    host = peewee.CharField(default="")
    # Unused since host-keyed converges (0016): each target holds its own generation.
    generation = peewee.IntegerField(default=0)
    # A reconcile started by `buddo-deploy reconcile` is run by that process only.
    reserved_for = peewee.CharField(null=True)
    result = peewee.TextField(null=True)
    # A converge of one deployment, whose run timed out (jobqueue.retry_alone, retry_later):
    # only that deployment's changes join it.
    solo = peewee.BooleanField(default=False)

    class Meta:
        table_name = "jobs"


class JobTarget(BaseModel):
    """A deployment a host's converge covers, and that deployment's own outcome of the run."""

    job = peewee.ForeignKeyField(Job, backref="targets")
    deployment = peewee.ForeignKeyField(Deployment, backref="job_targets")
    job_id: int
    deployment_id: uuid.UUID
    # Converge the deployment to at least this generation.
    generation = peewee.IntegerField()
    state = peewee.CharField(default="queued")
    last_error = peewee.TextField(null=True)
    failed_task = peewee.CharField(null=True)

    class Meta:
        table_name = "job_targets"
        primary_key = peewee.CompositeKey("job", "deployment")


class RateLimitCounter(BaseModel):
    key = peewee.CharField()
    window_start = peewee.BigIntegerField()
    count = peewee.IntegerField(default=0)

    class Meta:
        table_name = "rate_limit_counters"
        primary_key = peewee.CompositeKey("key", "window_start")

    @classmethod
    def hit(cls, key: str, window_start: int) -> int:
        """Count one more for ``key`` in its window (one atomic upsert); the new count.

        Now and then windows that started more than a day ago are deleted (housekeeping;
        the request rate limits and the certificate budget share the table, so the
        retention outlasts the longest window of either).
        """
        db = database_proxy.obj
        param = db.param
        # Only the driver's placeholder (? or %s) is formatted in.
        sql = ("INSERT INTO rate_limit_counters (key, window_start, count) "  # noqa: S608
               f"VALUES ({param}, {param}, 1) ON CONFLICT (key, window_start) "
               "DO UPDATE SET count = rate_limit_counters.count + 1 RETURNING count")
        cursor = db.execute_sql(sql, (key, window_start))
        count = int(cursor.fetchone()[0])
        if random.random() < 0.01:  # noqa: S311 - housekeeping, not security
            cls.delete().where(cls.window_start < window_start - COUNTER_RETENTION_S).execute()
        return count


class SchemaMigration(BaseModel):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.CharField()
    applied_at = peewee.DateTimeField()

    class Meta:
        table_name = "schema_migrations"


class JobEvent(BaseModel):
    id = peewee.AutoField()
    job = peewee.ForeignKeyField(Job, backref="events")
    attempt = peewee.IntegerField()
    created_at = peewee.DateTimeField()
    event = peewee.CharField()
    host = peewee.CharField(null=True)
    task = peewee.CharField(null=True)
    status = peewee.CharField(null=True)
    message = peewee.TextField(null=True)

    class Meta:
        table_name = "job_events"


class BillingAccount(BaseModel):
    operator_id = peewee.CharField(primary_key=True)
    points_balance = peewee.BigIntegerField(default=0)
    sats_balance = peewee.BigIntegerField(default=0)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "billing_accounts"


class BillingCycle(BaseModel):
    id = peewee.AutoField()
    deployment = peewee.ForeignKeyField(Deployment, backref="billing_cycles")
    deployment_id: uuid.UUID
    cycle = peewee.IntegerField()
    operator_id = peewee.CharField()
    track = peewee.CharField(choices=choices(BillingTrack))
    amount = peewee.BigIntegerField()
    stipend_points = peewee.BigIntegerField()
    starts_at = peewee.DateTimeField()
    state = peewee.CharField(choices=choices(CycleState))
    paid_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "billing_cycles"


class LedgerEntry(BaseModel):
    id = peewee.AutoField()
    operator_id = peewee.CharField()
    kind = peewee.CharField(choices=choices(LedgerKind))
    track = peewee.CharField(choices=choices(BillingTrack))
    amount = peewee.BigIntegerField()
    deployment = peewee.ForeignKeyField(Deployment, null=True, backref="ledger_entries")
    deployment_id: uuid.UUID | None
    cycle = peewee.IntegerField(null=True)
    reference = peewee.CharField(null=True)
    details = peewee.TextField(null=True)
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "billing_ledger"


class Lease(BaseModel):
    name = peewee.CharField(primary_key=True)
    owner = peewee.CharField(null=True)
    expires_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "leases"


class Release(BaseModel):
    """What one successful deploy, restart or rollback ran (migration 0009)."""

    id = peewee.AutoField()
    deployment = peewee.ForeignKeyField(Deployment, backref="releases")
    deployment_id: uuid.UUID
    number = peewee.IntegerField()
    image = peewee.CharField()
    image_digest = peewee.CharField()
    # Run by digest (a rollback), not by the tag.
    pinned = peewee.BooleanField(default=False)
    rollback_of = peewee.IntegerField(null=True)
    initiated_by = peewee.CharField(null=True)
    generation = peewee.IntegerField()
    created_at = peewee.DateTimeField()
    # What it ran with (migration 0020; NULL in older releases): the env's ciphertext and names, the port.
    env_vars_encrypted = peewee.TextField(null=True)
    env_var_names = peewee.TextField(null=True)
    port = peewee.IntegerField(null=True)
    health_check = peewee.TextField(null=True)  # migration 0021

    class Meta:
        table_name = "releases"


class RegistryLogin(BaseModel):
    """An operator's credentials for one registry host (migration 0010): used for every pull
    of that host's images by the operator's deployments, and for no one else's."""

    id = TextUUIDField(primary_key=True)
    operator_id = peewee.CharField(index=True)
    # host[:port], lowercase: the part of an image reference before its first "/".
    registry = peewee.CharField()
    username = peewee.CharField()
    # Fernet (crypto.encrypt_secret with BUDDO_SECRET_KEY); the password is never stored in clear.
    password_encrypted = peewee.TextField()
    inserted_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "registry_logins"
        indexes = ((("operator_id", "registry"), True),)


class IdempotencyKey(BaseModel):
    """An operator's ``Idempotency-Key`` and what its request was answered (migration 0019)."""

    operator_id = peewee.CharField()
    idempotency_key = peewee.CharField()
    # HMAC-SHA256 (BUDDO_SECRET_KEY) of method, path and body: never the body itself.
    fingerprint = peewee.CharField()
    state = peewee.CharField()  # started | answered
    status = peewee.IntegerField(null=True)
    body = peewee.TextField(null=True)  # the answer's body, encrypted (BUDDO_SECRET_KEY; migration 0030)
    headers = peewee.TextField(null=True)  # JSON: the answer's Location and Content-Type
    created_at = peewee.DateTimeField()
    expires_at = peewee.DateTimeField()

    class Meta:
        table_name = "idempotency_keys"
        primary_key = peewee.CompositeKey("operator_id", "idempotency_key")


class WebhookEndpoint(BaseModel):
    """An operator's webhook endpoint (migration 0023): where, which event types, signed how."""

    id = TextUUIDField(primary_key=True)
    operator_id = peewee.CharField()
    url = peewee.TextField()
    description = peewee.CharField(null=True)
    event_types = peewee.TextField()  # JSON list of vocabulary.WebhookEvent
    # Fernet (crypto.encrypt_secret); the whsec_ secret is shown once, at creation.
    secret_encrypted = peewee.TextField()
    enabled = peewee.BooleanField()
    disabled_reason = peewee.TextField(null=True)
    failing_since = peewee.DateTimeField(null=True)
    inserted_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "webhook_endpoints"


class WebhookDelivery(BaseModel):
    """One event for one endpoint and its attempts; its id is the message's ``webhook-id``."""

    id = peewee.CharField(primary_key=True)
    endpoint = peewee.ForeignKeyField(WebhookEndpoint, column_name="endpoint_id", backref="deliveries")
    event_type = peewee.CharField()
    payload = peewee.TextField()  # the JSON body, as signed
    state = peewee.CharField()  # pending | succeeded | failed
    attempts = peewee.IntegerField()
    next_attempt_at = peewee.DateTimeField(null=True)
    last_attempt_at = peewee.DateTimeField(null=True)
    last_status = peewee.IntegerField(null=True)
    last_error = peewee.TextField(null=True)
    inserted_at = peewee.DateTimeField()

    class Meta:
        table_name = "webhook_deliveries"


class Run(BaseModel):
    """A one-off command of a deployment (migration 0024); services/runs.py."""

    id = TextUUIDField(primary_key=True)
    deployment = peewee.ForeignKeyField(Deployment, column_name="deployment_id", backref="runs")
    # Foreign-key id accessor peewee adds (declared for the type checker only).
    deployment_id: uuid.UUID
    # Fernet (crypto.encrypt_secret) of the JSON argv: a command may hold a secret.
    command_encrypted = peewee.TextField()
    timeout_s = peewee.IntegerField()
    state = peewee.CharField()  # vocabulary.RunState
    exit_code = peewee.IntegerField(null=True)
    output = peewee.TextField(null=True)  # JSON lines, env values masked
    error = peewee.TextField(null=True)
    initiated_by = peewee.CharField(null=True)
    job_id = peewee.BigIntegerField(null=True)
    inserted_at = peewee.DateTimeField()
    started_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "runs"


class OutputFollow(BaseModel):
    """A deployment whose output is followed (migration 0025): until when, and who collects it."""

    deployment_id = peewee.CharField(primary_key=True)
    until = peewee.DateTimeField()
    owner = peewee.CharField(null=True)
    lease_until = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "output_follows"


class OutputLine(BaseModel):
    """One line a followed deployment or a one-off run printed, env values masked (migrations
    0025, 0026): ``subject_id`` is the deployment's id or the run's."""

    id = peewee.BigAutoField()
    subject_id = peewee.CharField()
    at = peewee.CharField()
    stream = peewee.CharField()
    text = peewee.TextField()
    container = peewee.CharField()
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "output_lines"
