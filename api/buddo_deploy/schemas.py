"""Request and response shapes (pydantic). The OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATH = re.compile(
    rf"^{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)
MAX_ENV_VARS = 50
MAX_ENV_VALUE = 4096
MAX_ENV_TOTAL = 64 * 1024

DeploymentStatus = Literal["pending", "deploying", "running", "stopped", "failed", "destroyed"]
HealthStatus = Literal["unknown", "healthy", "unhealthy"]
AuditAction = Literal["create", "deploy", "stop", "restart", "destroy", "suspend", "reactivate"]
AuditStatus = Literal["pending", "running", "completed", "failed"]


def _rfc3339(value: dt.datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


Timestamp = Annotated[dt.datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]


class ValidationContext(BaseModel):
    allowed_registries: tuple[str, ...]
    reserved_subdomains: tuple[str, ...]
    base_domain: str


def _context(info: ValidationInfo) -> ValidationContext:
    if not isinstance(info.context, ValidationContext):
        raise TypeError("DeploymentCreate needs a ValidationContext")
    return info.context


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subdomain: StrictStr = Field(description="1-32 chars: lowercase letters, digits, hyphens")
    image: StrictStr = Field(description="Image reference from an allowed registry")
    tier: StrictStr = Field(description="Tier slug from GET /api/deploy/tiers")
    port: StrictInt = Field(3000, ge=1, le=65535, description="Container port to expose")
    custom_domain: StrictStr | None = Field(None, description="Custom domain (tier must allow it)")
    env_vars: dict[str, StrictStr] = Field(default_factory=dict, description="At most 50 keys")

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str, info: ValidationInfo) -> str:
        if not 1 <= len(value) <= 32:
            raise ValueError("must be 1-32 characters")
        if not SUBDOMAIN.match(value):
            raise ValueError(
                "must be lowercase letters, digits and hyphens, not starting or ending with a hyphen"
            )
        if value in _context(info).reserved_subdomains:
            raise ValueError(f"'{value}' is reserved")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str, info: ValidationInfo) -> str:
        if len(value) > 512:
            raise ValueError("must be at most 512 characters")
        allowed = _context(info).allowed_registries
        prefix = next((p for p in allowed if value.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"registry not allowed; image must start with one of: {', '.join(allowed)}")
        if not IMAGE_PATH.match(value[len(prefix):]):
            raise ValueError("is not a valid image reference (repository[:tag][@sha256:digest])")
        return value

    @field_validator("tier")
    @classmethod
    def _tier(cls, value: str) -> str:
        if not value or len(value) > 64:
            raise ValueError("must be a tier slug")
        return value

    @field_validator("custom_domain")
    @classmethod
    def _custom_domain(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        labels = value.split(".")
        if (
            len(value) > 253
            or len(labels) < 2
            or not all(DNS_LABEL.match(label) for label in labels)
            or not labels[-1].isalpha()
        ):
            raise ValueError("must be a lowercase fully qualified domain name, e.g. app.example.com")
        base = _context(info).base_domain
        if value == base or value.endswith("." + base):
            raise ValueError(f"must not be under the platform domain {base}")
        return value

    @field_validator("env_vars")
    @classmethod
    def _env_vars(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV_VARS:
            raise ValueError(f"at most {MAX_ENV_VARS} variables")
        bad = sorted(name for name in value if not ENV_NAME.match(name) or len(name) > 128)
        if bad:
            raise ValueError(f"invalid variable names: {', '.join(bad[:5])} (use [A-Za-z_][A-Za-z0-9_]*)")
        long = sorted(name for name, item in value.items() if len(item) > MAX_ENV_VALUE or "\x00" in item)
        if long:
            raise ValueError(f"values too long (max {MAX_ENV_VALUE}) or containing NUL: {', '.join(long[:5])}")
        if sum(len(k) + len(v) for k, v in value.items()) > MAX_ENV_TOTAL:
            raise ValueError(f"total size exceeds {MAX_ENV_TOTAL} bytes")
        return value


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
    port: int
    status: DeploymentStatus
    desired_state: Literal["running", "stopped", "absent"] = Field(
        description="What the deployment should be; `status` says how far the host has got there")
    generation: int = Field(description="Bumped by every change of the desired state")
    observed_generation: int = Field(description="The generation the host has converged to")
    health_status: HealthStatus
    last_health_check: Timestamp | None
    billing_status: str
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


class LogList(BaseModel):
    logs: list[LogEntryOut]


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
