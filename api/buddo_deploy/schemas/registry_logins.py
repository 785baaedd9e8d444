"""Operators' registry logins."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, field_validator

from .common import Timestamp, ValidationContext, anchored, context_of

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
        hosts = context_of(info).registry_hosts
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
