"""Request and response shapes (pydantic). The OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

# Patterns are written once, unanchored, and always applied whole: `re.fullmatch` here,
# `^(?:...)$` in the JSON schema (ECMA-262 and pydantic's Rust engine end `$` at the end of
# the text). Python's own `$` also matches before a trailing newline, so "admin\n" got in.
SUBDOMAIN_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
DNS_LABEL_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# At least two labels, the last one (the TLD) letters only.
DOMAIN_PATTERN = rf"(?:{DNS_LABEL_PATTERN}\.)+[a-z]{{1,63}}"
TIER_SLUG_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATH_PATTERN = (
    rf"{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?"
)
# An env value is anything but NUL (which cannot reach a process environment).
ENV_VALUE_PATTERN = r"[^\x00]*"
MAX_ENV_VARS = 50
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 4096
MAX_ENV_TOTAL = 64 * 1024
MAX_IMAGE = 512
MAX_DOMAIN = 253
MAX_PAGE = 100
MAX_CURSOR = 200


def anchored(pattern: str) -> str:
    """The JSON-schema/pydantic form of a pattern that must match the whole string."""
    return f"^(?:{pattern})$"


DeploymentStatus = Literal["pending", "deploying", "running", "stopped", "failed", "destroyed"]
HealthStatus = Literal["unknown", "healthy", "unhealthy"]
AuditAction = Literal["create", "deploy", "stop", "restart", "destroy", "suspend", "reactivate"]
AuditStatus = Literal["pending", "running", "completed", "failed"]
BillingStatus = Literal["active", "past_due", "suspended", "cancelled"]
BillingTrack = Literal["buddo_points", "bitcoin"]


def _rfc3339(value: dt.datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


Timestamp = Annotated[dt.datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]


class ValidationContext(BaseModel):
    allowed_registries: tuple[str, ...]
    reserved_subdomains: tuple[str, ...]
    base_domain: str
    # The catalogue's tier slugs: the document lists them; an unknown slug is a 404 (tier_not_found).
    tier_slugs: tuple[str, ...] = ()

    @property
    def image_pattern(self) -> str:
        registries = "|".join(re.escape(prefix) for prefix in self.allowed_registries)
        return f"(?:{registries}){IMAGE_PATH_PATTERN}"

    @property
    def registry_hosts(self) -> tuple[str, ...]:
        """The host[:port] of each allowed registry (lowercase, once each): what a registry login is for."""
        return tuple(dict.fromkeys(registry_host(prefix) for prefix in self.allowed_registries))

    @property
    def registry_host_pattern(self) -> str:
        """The registry hosts in any ASCII case (ECMA-262 has no inline flag for that)."""
        return "|".join("".join(_any_case(char) for char in host) for host in self.registry_hosts)


def registry_host(reference: str) -> str:
    """The registry of an image reference or an allowed-registry prefix: the text before its first
    "/", lowercased (ASCII only: no Unicode case folding makes another host of it)."""
    host = reference.split("/", 1)[0]
    return host.lower() if host.isascii() else host


def _any_case(char: str) -> str:
    if char.isascii() and char.isalpha():
        return f"[{char.lower()}{char.upper()}]"
    # `-` and `:` need no escape, and ECMA-262's unicode mode refuses re.escape's `\-`.
    return char if char.isalnum() or char in "-:" else re.escape(char)


def _context(info: ValidationInfo) -> ValidationContext:
    if not isinstance(info.context, ValidationContext):
        raise TypeError("validating this model needs a ValidationContext")
    return info.context


def _env_vars_schema(schema: dict[str, Any]) -> None:
    # pydantic describes constrained keys with patternProperties, which leaves every other
    # name valid in the document; propertyNames says what the validator enforces.
    schema.pop("patternProperties", None)
    schema["propertyNames"] = {"type": "string", "minLength": 1, "maxLength": MAX_ENV_NAME,
                               "pattern": anchored(ENV_NAME_PATTERN)}
    schema["additionalProperties"] = {"type": "string", "maxLength": MAX_ENV_VALUE,
                                      "pattern": anchored(ENV_VALUE_PATTERN)}


EnvName = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ENV_NAME,
                                                 pattern=anchored(ENV_NAME_PATTERN))]
EnvValue = Annotated[StrictStr, StringConstraints(max_length=MAX_ENV_VALUE, pattern=anchored(ENV_VALUE_PATTERN))]


def _integral(value: Any) -> Any:
    # JSON has one number type: 3000.0 is the integer 3000 to JSON Schema (and to a fuzzer).
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A JSON integer: strict (no "80", no true) but 3000.0 counts.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]

# What a pattern means, for the 422 message (pydantic's own names the regex).
PATTERN_HINTS = {
    "subdomain": "must be lowercase letters, digits and hyphens, not starting or ending with a hyphen",
    "tier": "must be a tier slug (lowercase letters, digits and hyphens)",
    "custom_domain": "must be a lowercase fully qualified domain name, e.g. app.example.com",
    "env_vars.[key]": "invalid variable name (use [A-Za-z_][A-Za-z0-9_]*)",
    "env_vars": "must not contain NUL",
    "cursor": "is not a cursor this API returned",
    "username": "must not contain control characters or ':'",
    "password": "must not contain a newline (CR or LF) or NUL",
}


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subdomain: StrictStr = Field(description="1-32 chars: lowercase letters, digits, hyphens", min_length=1,
                                 max_length=32, pattern=anchored(SUBDOMAIN_PATTERN))
    image: StrictStr = Field(description="Image reference from an allowed registry", min_length=1,
                             max_length=MAX_IMAGE)
    tier: StrictStr = Field(description="Tier slug from GET /api/deploy/tiers", min_length=1, max_length=64,
                            pattern=anchored(TIER_SLUG_PATTERN))
    port: JsonInt = Field(3000, ge=1, le=65535, description="Container port to expose")
    custom_domain: StrictStr | None = Field(None, description="Custom domain (tier must allow it)",
                                            max_length=MAX_DOMAIN, pattern=anchored(DOMAIN_PATTERN))
    env_vars: dict[EnvName, EnvValue] = Field(
        default_factory=dict, max_length=MAX_ENV_VARS, json_schema_extra=_env_vars_schema,
        description=f"At most {MAX_ENV_VARS} variables, {MAX_ENV_TOTAL} bytes of names and values in all")

    @classmethod
    def json_schema_for(cls, context: ValidationContext) -> dict[str, Any]:
        """The request schema with what the context adds to the static constraints."""
        schema = cls.model_json_schema(mode="validation")
        fields = schema["properties"]
        fields["subdomain"]["not"] = {"enum": sorted(context.reserved_subdomains)}
        fields["image"]["pattern"] = anchored(context.image_pattern)
        if context.tier_slugs:
            fields["tier"]["enum"] = list(context.tier_slugs)
        domain = next(branch for branch in fields["custom_domain"]["anyOf"] if branch.get("type") == "string")
        domain["not"] = {"pattern": f"(?:^|\\.){re.escape(context.base_domain)}$"}
        if context.allowed_registries and context.tier_slugs:
            schema["examples"] = [{"subdomain": "my-app", "image": f"{context.allowed_registries[0]}my-app:latest",
                                   "tier": context.tier_slugs[0], "port": 3000, "env_vars": {"NODE_ENV": "production"}}]
        return schema

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str, info: ValidationInfo) -> str:
        if value in _context(info).reserved_subdomains:
            raise ValueError(f"'{value}' is reserved")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str, info: ValidationInfo) -> str:
        context = _context(info)
        allowed = context.allowed_registries
        if not any(value.startswith(prefix) for prefix in allowed):
            raise ValueError(f"registry not allowed; image must start with one of: {', '.join(allowed)}")
        if not re.fullmatch(context.image_pattern, value):
            raise ValueError("is not a valid image reference (repository[:tag][@sha256:digest])")
        return value

    @field_validator("custom_domain")
    @classmethod
    def _custom_domain(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        base = _context(info).base_domain
        if value == base or value.endswith("." + base):
            raise ValueError(f"must not be under the platform domain {base}")
        return value

    @field_validator("env_vars")
    @classmethod
    def _env_vars(cls, value: dict[str, str]) -> dict[str, str]:
        if sum(len(k) + len(v) for k, v in value.items()) > MAX_ENV_TOTAL:
            raise ValueError(f"total size exceeds {MAX_ENV_TOTAL} bytes")
        return value


class ListQuery(BaseModel):
    """The query of GET /api/deploy/apps (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=MAX_CURSOR, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="next_cursor of the previous page")
    status: DeploymentStatus | None = Field(None, description="Only deployments with this status")
    include_destroyed: bool = Field(False, description="Also list destroyed deployments")


class LogsQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/logs (unknown parameters are ignored): pages as GET /apps does."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=MAX_CURSOR, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="next_cursor of the previous page")


class BillingQuery(BaseModel):
    """The query of GET /api/deploy/billing (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Ledger page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=18, pattern=r"^[0-9]+$",
                                     description="next_cursor of the previous page")


class JobQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/jobs/{job_id} (unknown parameters are ignored)."""

    limit: int = Field(200, ge=1, le=1000, description="Events per page")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=64, description="next_cursor of the previous page")


class TierOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    payment_method: Literal["buddo_points", "bitcoin"]
    monthly_cost_points: int | None
    monthly_cost_sats: int | None
    memory_limit_mb: int
    cpu_limit_millicores: int
    custom_domain_allowed: bool
    monthly_stipend_points: int
    ad_reach_multiplier: float
    max_deployments: int
    pids_limit: int = Field(description="Most processes (and threads) a deployment's container may run")
    log_max_size_mb: int = Field(description="Size in MB at which a container's log is truncated")
    disk_limit_mb: int = Field(description="Most MB a deployment's container may write; writes beyond fail in the app")


class DnsRecordOut(BaseModel):
    type: Literal["TXT", "CNAME"]
    name: str = Field(description="The record's name (fully qualified, without the final dot)")
    value: str = Field(description="TXT: the text; CNAME: the name it points to")


class CustomDomainVerificationOut(DnsRecordOut):
    """The TXT record that proves the claim of a custom domain (any one of the records does)."""

    alternatives: list[DnsRecordOut] = Field(
        description="Records that prove it as well: a CNAME to the deployment's own name (not at a zone apex)")


class DeploymentOut(BaseModel):
    id: uuid.UUID
    app_id: str
    deploy_tier_id: uuid.UUID
    tier: str
    container_name: str
    container_image: str
    subdomain: str
    url: str
    custom_domain: str | None
    custom_domain_status: Literal["pending", "active", "misconfigured", "expired"] | None = Field(
        description="`pending` until the custom domain's DNS proves the claim (custom_domain_verification), then "
                    "`active` (routed, certificate on the first request) or `misconfigured` (the proof is gone); "
                    "`expired`: not proved in time, the claim was released (custom_domain is null, the audit log "
                    "names it); null without one")
    custom_domain_verification: CustomDomainVerificationOut | None = Field(
        description="The DNS record that proves the custom domain claim (keep it while the domain is used), "
                    "or its alternative; null without a custom domain")
    port: int
    status: DeploymentStatus
    desired_state: Literal["running", "stopped", "absent"] = Field(
        description="What the deployment should be; `status` says how far the host has got there")
    generation: int = Field(description="Bumped by every change of the desired state")
    observed_generation: int = Field(description="The generation the host has converged to")
    health_status: HealthStatus
    last_health_check: Timestamp | None
    billing_status: BillingStatus
    next_billing_at: Timestamp
    memory_limit_mb: int
    cpu_limit_millicores: int
    env_var_names: list[str]
    host: str
    image_digest: str | None
    inserted_at: Timestamp
    updated_at: Timestamp


class DeploymentEnvelope(BaseModel):
    deployment: DeploymentOut


class DeploymentList(BaseModel):
    deployments: list[DeploymentOut]
    next_cursor: str | None


class StatusOut(BaseModel):
    id: uuid.UUID
    status: DeploymentStatus
    subdomain: str
    health_status: HealthStatus
    last_health_check: Timestamp | None


class LogEntryOut(BaseModel):
    id: uuid.UUID
    action: AuditAction
    status: AuditStatus
    initiated_by: str | None
    inserted_at: Timestamp
    details: Any
    job_id: int | None = Field(
        None, description="The job that converged this entry: GET /api/deploy/apps/{id}/jobs/{job_id}")


class LogList(BaseModel):
    logs: list[LogEntryOut] = Field(description="Oldest first (chronological), one page")
    next_cursor: str | None = Field(description="The next (newer) page; null on the last")


class DestroyOut(BaseModel):
    message: Literal["Deployment destroyed"]
    id: uuid.UUID


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None
    request_id: str | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


# --- billing --------------------------------------------------------------

OPERATOR_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@|+-]{0,254}$"
REFERENCE = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}$"
# Balances are BIGINT: no single payment may come near overflowing one.
MAX_PAYMENT = 10**15


class PaymentIn(BaseModel):
    """A payment notification (the signed webhook's body)."""

    model_config = ConfigDict(extra="forbid")

    operator_id: StrictStr = Field(pattern=OPERATOR_ID, description="The operator (the token's subject)")
    track: BillingTrack = Field(description="buddo_points credits points, bitcoin credits sats")
    amount: StrictInt = Field(gt=0, le=MAX_PAYMENT, description="Points or satoshis, a positive integer")
    reference: StrictStr = Field(pattern=REFERENCE,
                                 description="The payment's id at its source: the idempotency key")


class SettledOut(BaseModel):
    deployment_id: uuid.UUID
    cycle: int


class PaymentOut(BaseModel):
    reference: str
    operator_id: str
    track: BillingTrack
    amount: int
    credited_at: Timestamp
    replayed: bool = Field(description="True when this reference was credited before: nothing changed now")
    points_balance: int
    sats_balance: int
    settled: list[SettledOut] = Field(description="Outstanding cycles this payment paid, oldest first")
    reactivated: list[uuid.UUID] = Field(description="Suspended deployments this payment reactivated")


class ChargeOut(BaseModel):
    track: BillingTrack
    amount: int
    at: Timestamp


class OutstandingOut(BaseModel):
    cycle: int
    track: BillingTrack
    amount: int
    starts_at: Timestamp


class DeploymentBillingOut(BaseModel):
    id: uuid.UUID
    subdomain: str
    tier: str
    status: DeploymentStatus
    billing_status: BillingStatus
    next_billing_at: Timestamp
    next_charge: ChargeOut | None = Field(description="Null while no cycle will start (stopped or suspended)")
    outstanding: list[OutstandingOut] = Field(description="Unpaid cycles, oldest first")


class DebtCycleOut(BaseModel):
    deployment_id: uuid.UUID
    subdomain: str
    billing_status: BillingStatus = Field(description="cancelled: the deployment was destroyed; the cycle is owed")
    cycle: int
    track: BillingTrack
    amount: int
    starts_at: Timestamp


class DebtOut(BaseModel):
    buddo_points: int = Field(description="Points owed for started cycles not yet paid")
    bitcoin: int = Field(description="Satoshis owed for started cycles not yet paid")
    cycles: list[DebtCycleOut] = Field(description="Every unpaid cycle, destroyed deployments' included, oldest "
                                       "first: later credits pay them in this order")


class LedgerEntryOut(BaseModel):
    id: int
    kind: Literal["charge", "stipend", "credit", "adjustment"]
    track: BillingTrack
    amount: int = Field(description="Signed: a charge is negative")
    deployment_id: uuid.UUID | None
    cycle: int | None
    reference: str | None
    details: Any
    created_at: Timestamp


class BillingOut(BaseModel):
    operator_id: str
    points_balance: int
    sats_balance: int
    billing_enabled: bool
    cycle_seconds: int
    grace_seconds: int
    debt: DebtOut = Field(description="While anything is owed, creating a deployment is refused "
                          "(402 payment_required)")
    deployments: list[DeploymentBillingOut]
    ledger: list[LedgerEntryOut] = Field(description="Newest first")
    next_cursor: str | None
JobState = Literal["queued", "running", "succeeded", "failed"]


class JobEventOut(BaseModel):
    id: int
    attempt: int
    created_at: Timestamp
    event: str = Field(description="ansible-runner event, e.g. runner_on_failed")
    task: str | None
    host: str | None
    status: Literal["ok", "changed", "failed", "unreachable", "ignored"] | None
    message: str | None = Field(description="A failed task's message, the play's name or the recap")


class JobOut(BaseModel):
    id: int
    deployment_id: uuid.UUID
    action: str = Field(description="converge: bring the deployment to `generation`")
    state: JobState
    generation: int
    attempts: int
    created_at: Timestamp
    started_at: Timestamp | None = Field(description="When the latest attempt began")
    finished_at: Timestamp | None
    duration_s: float | None = Field(description="Of the latest attempt, once finished")
    run_after: Timestamp | None = Field(description="Queued: when the next attempt may begin (backoff)")
    last_error: str | None
    failed_task: str | None = Field(description="The first task of the latest attempt that failed")
    events: list[JobEventOut] = Field(description="Oldest first, one page")
    next_cursor: str | None


class JobEnvelope(BaseModel):
    job: JobOut


# --- releases -------------------------------------------------------------


class ReleasesQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/releases (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=9, pattern=r"^[0-9]+$",
                                     description="next_cursor of the previous page")


class RollbackIn(BaseModel):
    """The body of POST /api/deploy/apps/{id}/rollback (optional)."""

    model_config = ConfigDict(extra="forbid")

    # Bounds inside the Annotated: on an optional field pydantic would not write them as JSON Schema.
    release: Annotated[StrictInt, Ge(1), Le(10**9), BeforeValidator(_integral)] | None = Field(
        None, description="The release to run again; default: the one before the newest")


class ReleaseOut(BaseModel):
    number: int
    image: str = Field(description="The image reference the deployment was created with")
    image_digest: str = Field(description="The digest that ran; a rollback runs the image by this digest")
    pinned: bool = Field(description="Run by digest (a rollback), not by the tag")
    rollback_of: int | None = Field(description="The release a rollback ran again")
    initiated_by: str | None
    created_at: Timestamp
    kept: bool = Field(description="The image is kept on the host: a rollback to this release is possible")


class ReleaseList(BaseModel):
    releases: list[ReleaseOut] = Field(description="Newest first")
    next_cursor: str | None


# --- app output -----------------------------------------------------------

MAX_TAIL = 5000
_RFC3339_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]")


class OutputQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/output (unknown parameters are ignored)."""

    tail: int = Field(100, ge=1, le=MAX_TAIL, description="Lines at most (stdout and stderr together)")
    since: AwareDatetime | None = Field(None, description="Only lines after this RFC 3339 time (with offset)")

    @field_validator("since", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # pydantic would take a number ("0.5") as Unix time; the parameter is an RFC 3339 time.
        if isinstance(value, str) and not _RFC3339_DATE.match(value):
            raise ValueError("must be an RFC 3339 time with offset, e.g. 2026-01-01T00:00:00Z")
        return value

    @field_validator("since")
    @classmethod
    def _since(cls, value: dt.datetime | None) -> dt.datetime | None:
        # Every line is newer than the epoch: an earlier instant asks for all of them.
        if value is not None and value < dt.datetime(1970, 1, 1, tzinfo=dt.UTC):
            return None
        return value


class OutputLine(BaseModel):
    at: str = Field(description="When the app printed it (RFC 3339, from the container runtime)")
    stream: Literal["stdout", "stderr"]
    text: str = Field(description="The line, env var values masked as ********")


class OutputContainer(BaseModel):
    id: str
    name: str
    state: str = Field(description="running, exited, ...")
    exit_code: int | None


class OutputRefresh(BaseModel):
    job_id: int = Field(description="The read's job (GET /api/deploy/apps/{id}/jobs/{job_id})")
    state: Literal["queued", "running"]
    queued_at: Timestamp


class OutputOut(BaseModel):
    lines: list[OutputLine] = Field(description="Oldest first (newest last)")
    container: OutputContainer | None = Field(
        description="The container read; null when the deployment has none (or no read covers this request yet)")
    collected_at: Timestamp | None = Field(
        description="When a worker read these lines on the host; null (with status 202): no read yet")
    age_s: float | None = Field(description="Seconds since collected_at")
    refresh: OutputRefresh | None = Field(
        description="A newer read, queued or running (for a read older than BUDDO_OUTPUT_MAX_AGE, or none yet): "
        "ask again after Retry-After (202) or a second or two")
    last_error: str | None = Field(
        description="Why the latest read failed (e.g. the host is unreachable); the lines are from an earlier one")


# --- registry logins ------------------------------------------------------

MAX_REGISTRY = 255
MAX_REGISTRY_USERNAME = 255
MAX_REGISTRY_PASSWORD = 4096
# What a registry host looks like (a DNS name or an IPv4 address, an optional port): only
# to tell a malformed {registry} from one that is merely not allowed.
REGISTRY_HOST_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?"
# No control characters; no ':' either, which ends the user-id of HTTP Basic auth (RFC 7617).
REGISTRY_USERNAME_PATTERN = r"[^\x00-\x1f\x7f-\x9f:]+"
# A newline would end the password `podman login --password-stdin` reads; NUL cannot reach it.
REGISTRY_PASSWORD_PATTERN = r"[^\x00\n\r]+"


class RegistryLoginKey(BaseModel):
    """The {registry} of /api/deploy/registry-logins/{registry}: an allowed registry's host[:port]."""

    registry: StrictStr = Field(min_length=1, max_length=MAX_REGISTRY)

    @classmethod
    def path_parameter(cls, context: ValidationContext) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_REGISTRY}
        if context.registry_hosts:
            schema["pattern"] = anchored(context.registry_host_pattern)
            schema["examples"] = list(context.registry_hosts)
        return {"name": "registry", "in": "path", "required": True, "schema": schema,
                "description": "host[:port] of an allowed registry (case-insensitive), e.g. "
                               f"{', '.join(context.registry_hosts) or 'ghcr.io'}"}

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str, info: ValidationInfo) -> str:
        hosts = _context(info).registry_hosts
        host = value.lower() if value.isascii() else value
        if host in hosts:
            return host
        if not re.fullmatch(REGISTRY_HOST_PATTERN, value):
            raise ValueError("is not a registry host (host[:port], e.g. ghcr.io)")
        raise ValueError(f"registry not allowed; must be one of: {', '.join(hosts)}")


class RegistryLoginIn(BaseModel):
    """The body of PUT /api/deploy/registry-logins/{registry}."""

    model_config = ConfigDict(extra="forbid")

    username: StrictStr = Field(min_length=1, max_length=MAX_REGISTRY_USERNAME,
                                pattern=anchored(REGISTRY_USERNAME_PATTERN),
                                description="The registry account (no control characters, no ':')")
    password: StrictStr = Field(min_length=1, max_length=MAX_REGISTRY_PASSWORD,
                                pattern=anchored(REGISTRY_PASSWORD_PATTERN),
                                json_schema_extra={"writeOnly": True, "format": "password"},
                                description="Password or access token; write-only: stored encrypted, never shown")


class RegistryLoginOut(BaseModel):
    registry: str = Field(description="host[:port] of the registry, lowercase")
    username: str
    inserted_at: Timestamp
    updated_at: Timestamp


class RegistryLoginEnvelope(BaseModel):
    registry_login: RegistryLoginOut


class RegistryLoginList(BaseModel):
    registry_logins: list[RegistryLoginOut] = Field(description="The caller's own, by registry")


class RegistryLoginRemoved(BaseModel):
    message: Literal["Registry login removed"]
    registry: str
