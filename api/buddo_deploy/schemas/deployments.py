"""Deployments: the create request, list and log queries, the deployment view, its audit log."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from ..vocabulary import DeploymentStatus
from .common import (
    DOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    ENV_VALUE_PATTERN,
    MAX_CURSOR,
    MAX_DOMAIN,
    MAX_ENV_NAME,
    MAX_ENV_TOTAL,
    MAX_ENV_VALUE,
    MAX_ENV_VARS,
    MAX_IMAGE,
    MAX_PAGE,
    SUBDOMAIN_PATTERN,
    TIER_SLUG_PATTERN,
    AuditActionField,
    AuditStatusField,
    BillingStatusField,
    ConditionStatusField,
    ConditionTypeField,
    CustomDomainStatusField,
    DeploymentStatusField,
    DesiredStateField,
    HealthField,
    JsonInt,
    Timestamp,
    ValidationContext,
    anchored,
    context_of,
    integral,
)


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


# Where the OpenAPI document keeps the models a request schema refers to ($defs are moved there).
REF_TEMPLATE = "#/components/schemas/{model}"


def _string_branch(field: dict[str, Any]) -> dict[str, Any]:
    """The string schema of an optional string field (``anyOf: [string, null]``)."""
    branch: dict[str, Any] = next(b for b in field["anyOf"] if b.get("type") == "string")
    return branch


def check_image(value: str, info: ValidationInfo) -> str:
    """An image reference from an allowed registry (create and update)."""
    context = context_of(info)
    allowed = context.allowed_registries
    if not any(value.startswith(prefix) for prefix in allowed):
        raise ValueError(f"registry not allowed; image must start with one of: {', '.join(allowed)}")
    if not re.fullmatch(context.image_pattern, value):
        raise ValueError("is not a valid image reference (repository[:tag][@sha256:digest])")
    return value


class HealthCheck(BaseModel):
    """How the platform tells the app is up: before a new container takes traffic (within
    ``grace_s`` of its start) and while it serves (every ``interval_s``)."""

    model_config = ConfigDict(extra="forbid")

    path: StrictStr = Field("/", min_length=1, max_length=256, pattern=r"^/[!-~]*$",
                            description="The path requested (visible ASCII, no spaces)")
    expected_status: Annotated[StrictInt, Ge(100), Le(599), BeforeValidator(integral)] | None = Field(
        None, description="The status that means healthy; null: any status below 500")
    interval_s: Annotated[StrictInt, Ge(5), Le(3600), BeforeValidator(integral)] = Field(
        15, description="Seconds between probes while it serves (at least the platform's probe cycle)")
    timeout_s: Annotated[StrictInt, Ge(1), Le(60), BeforeValidator(integral)] = Field(
        3, description="Seconds one probe may take")
    grace_s: Annotated[StrictInt, Ge(1), Le(600), BeforeValidator(integral)] = Field(
        60, description="Seconds a new container has to answer healthy before it fails (its boot window)")


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
    health_check: HealthCheck | None = Field(None, description="How the app is probed; null: any answer on / "
                                             "within 60 s, then any status below 500 on / is healthy")

    @classmethod
    def json_schema_for(cls, context: ValidationContext) -> dict[str, Any]:
        """The request schema with what the context adds to the static constraints."""
        schema = cls.model_json_schema(mode="validation", ref_template=REF_TEMPLATE)
        fields = schema["properties"]
        fields["subdomain"]["not"] = {"enum": sorted(context.reserved_subdomains)}
        fields["image"]["pattern"] = anchored(context.image_pattern)
        if context.tier_slugs:
            fields["tier"]["enum"] = list(context.tier_slugs)
        _string_branch(fields["custom_domain"])["not"] = {"pattern": f"(?:^|\\.){re.escape(context.base_domain)}$"}
        if context.allowed_registries and context.tier_slugs:
            schema["examples"] = [{"subdomain": "my-app", "image": f"{context.allowed_registries[0]}my-app:latest",
                                   "tier": context.tier_slugs[0], "port": 3000, "env_vars": {"NODE_ENV": "production"}}]
        return schema

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str, info: ValidationInfo) -> str:
        if value in context_of(info).reserved_subdomains:
            raise ValueError(f"'{value}' is reserved")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str, info: ValidationInfo) -> str:
        return check_image(value, info)

    @field_validator("custom_domain")
    @classmethod
    def _custom_domain(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        base = context_of(info).base_domain
        if value == base or value.endswith("." + base):
            raise ValueError(f"must not be under the platform domain {base}")
        return value

    @field_validator("env_vars")
    @classmethod
    def _env_vars(cls, value: dict[str, str]) -> dict[str, str]:
        if sum(len(k) + len(v) for k, v in value.items()) > MAX_ENV_TOTAL:
            raise ValueError(f"total size exceeds {MAX_ENV_TOTAL} bytes")
        return value


def _env_patch_schema(schema: dict[str, Any]) -> None:
    _env_vars_schema(schema)
    schema["additionalProperties"] = {"anyOf": [schema["additionalProperties"], {"type": "null"}]}


class DeploymentUpdate(BaseModel):
    """The body of PATCH /api/deploy/apps/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    image: StrictStr | None = Field(None, description="A new image reference from an allowed registry (pulled as "
                                    "the tag is now)", min_length=1, max_length=MAX_IMAGE)
    env_vars: dict[EnvName, EnvValue | None] | None = Field(
        None, max_length=2 * MAX_ENV_VARS, json_schema_extra=_env_patch_schema,
        description=f"A merge: a string sets the variable, null unsets it, names not given are kept; the result "
                    f"holds at most {MAX_ENV_VARS} variables, {MAX_ENV_TOTAL} bytes of names and values in all")
    # Bounds inside the Annotated: on an optional field pydantic would not write them as JSON Schema.
    port: Annotated[StrictInt, Ge(1), Le(65535), BeforeValidator(integral)] | None = Field(
        None, description="The container port to expose")
    tier: StrictStr | None = Field(None, description="Another tier slug (GET /api/deploy/tiers)", min_length=1,
                                   max_length=64, pattern=anchored(TIER_SLUG_PATTERN))
    health_check: HealthCheck | None = Field(None, description="A new health check (replaces the whole check; "
                                             "fields not given take their defaults)")

    @classmethod
    def json_schema_for(cls, context: ValidationContext) -> dict[str, Any]:
        schema = cls.model_json_schema(mode="validation", ref_template=REF_TEMPLATE)
        fields = schema["properties"]
        _string_branch(fields["image"])["pattern"] = anchored(context.image_pattern)
        if context.tier_slugs:
            _string_branch(fields["tier"])["enum"] = list(context.tier_slugs)
        schema["examples"] = [{"env_vars": {"LOG_LEVEL": "debug", "OLD_FLAG": None}}]
        return schema

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_image(value, info)


class ListQuery(BaseModel):
    """The query of GET /api/deploy/apps (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=MAX_CURSOR, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="next_cursor of the previous page")
    status: DeploymentStatusField | None = Field(None, description="Only deployments with this status")
    include_destroyed: bool = Field(False, description="Also list destroyed deployments")


class LogsQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/logs (unknown parameters are ignored): pages as GET /apps does."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=MAX_CURSOR, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="next_cursor of the previous page")


_STATUS_WORD = "(?:" + "|".join(DeploymentStatus) + ")"
_WAIT_FOR = re.compile(f"^{_STATUS_WORD}(?:,{_STATUS_WORD}){{0,5}}$")
MAX_WAIT_S = 60


class StatusQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/status (unknown parameters are ignored)."""

    wait_for: StrictStr | None = Field(
        None, json_schema_extra={"pattern": _WAIT_FOR.pattern},
        description="Answer once the status is one of these (comma-separated), or at the timeout with the "
                    "current status (header `Wait-Result: timeout`); counted once against the rate limit")
    timeout: int = Field(30, ge=1, le=MAX_WAIT_S, description="Seconds to wait at most (with wait_for)")

    @field_validator("wait_for")
    @classmethod
    def _statuses(cls, value: str | None) -> str | None:
        if value is not None and not _WAIT_FOR.fullmatch(value):
            raise ValueError(f"must be statuses among {', '.join(DeploymentStatus)}, separated by commas")
        return value

    @property
    def statuses(self) -> frozenset[str]:
        return frozenset(self.wait_for.split(",")) if self.wait_for else frozenset()


class DnsRecordOut(BaseModel):
    type: Literal["TXT", "CNAME"]
    name: str = Field(description="The record's name (fully qualified, without the final dot)")
    value: str = Field(description="TXT: the text; CNAME: the name it points to")


class CustomDomainVerificationOut(DnsRecordOut):
    """The TXT record that proves the claim of a custom domain (any one of the records does)."""

    alternatives: list[DnsRecordOut] = Field(
        description="Records that prove it as well: a CNAME to the deployment's own name (not at a zone apex)")


class ConditionOut(BaseModel):
    """One status condition (as in Kubernetes): what is or is not so about the deployment, and why."""

    type: ConditionTypeField
    status: ConditionStatusField
    reason: str = Field(description="Why, in one CamelCase word (e.g. Running, ConvergeFailed, PaymentOverdue)")
    message: str
    observed_generation: int = Field(description="The generation the host had converged to when this was derived")
    last_transition_time: Timestamp | None = Field(
        None, exclude_if=lambda value: value is None,
        description="When the status last changed; left out where the platform keeps no such time")


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
    custom_domain_status: CustomDomainStatusField | None = Field(
        description="`pending` until the custom domain's DNS proves the claim (custom_domain_verification), then "
                    "`active` (routed, certificate on the first request) or `misconfigured` (the proof is gone); "
                    "`expired`: not proved in time, the claim was released (custom_domain is null, the audit log "
                    "names it); null without one")
    custom_domain_verification: CustomDomainVerificationOut | None = Field(
        description="The DNS record that proves the custom domain claim (keep it while the domain is used), "
                    "or its alternative; null without a custom domain")
    port: int
    status: DeploymentStatusField
    desired_state: DesiredStateField = Field(
        description="What the deployment should be; `status` says how far the host has got there")
    generation: int = Field(description="Bumped by every change of the desired state")
    observed_generation: int = Field(description="The generation the host has converged to")
    health_status: HealthField
    last_health_check: Timestamp | None
    billing_status: BillingStatusField
    next_billing_at: Timestamp
    memory_limit_mb: int
    cpu_limit_millicores: int
    env_var_names: list[str]
    health_check: HealthCheck | None = Field(description=(
        "The health check the deployment was given; null: the platform's own, which gives no field of its "
        "own: any answer on / within 60 s lets a new container take traffic, then any status below 500 on / "
        "is healthy (each probe up to 2 s, every probe cycle)"))
    host: str
    image_digest: str | None
    inserted_at: Timestamp
    updated_at: Timestamp
    conditions: list[ConditionOut] = Field(
        description="Ready, Progressing, Degraded, Suspended, and DomainVerified with a custom domain claim: "
                    "derived from the desired and observed state, health, billing and the custom domain's check")


class DeploymentEnvelope(BaseModel):
    deployment: DeploymentOut


class DeploymentList(BaseModel):
    deployments: list[DeploymentOut]
    next_cursor: str | None


class StatusOut(BaseModel):
    id: uuid.UUID
    status: DeploymentStatusField
    subdomain: str
    health_status: HealthField
    last_health_check: Timestamp | None


class LogEntryOut(BaseModel):
    id: uuid.UUID
    action: AuditActionField
    status: AuditStatusField
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
