"""Shapes and constraints every subject shares: patterns, timestamps, the validation context, errors."""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, GetCoreSchemaHandler, PlainSerializer, StrictInt, ValidationInfo
from pydantic_core import CoreSchema, core_schema

from ..vocabulary import (
    AuditAction,
    AuditStatus,
    BillingStatus,
    BillingTrack,
    ConditionStatus,
    ConditionType,
    CustomDomainStatus,
    DeploymentStatus,
    DesiredState,
    Health,
    JobState,
    LedgerKind,
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


class _AsLiteral:
    """A vocabulary enum validated and described as a Literal of its values: the same JSON schema
    (in place, no $defs entry, the field's title kept) and the same 422 messages; the value is the member."""

    def __get_pydantic_core_schema__(self, source: type[StrEnum], handler: GetCoreSchemaHandler) -> CoreSchema:
        values = core_schema.literal_schema([member.value for member in source])
        return core_schema.no_info_after_validator_function(source, values)


# The vocabulary's enums as fields: a row's string validates to the member, JSON is the value.
DesiredStateField = Annotated[DesiredState, _AsLiteral()]
DeploymentStatusField = Annotated[DeploymentStatus, _AsLiteral()]
HealthField = Annotated[Health, _AsLiteral()]
AuditActionField = Annotated[AuditAction, _AsLiteral()]
AuditStatusField = Annotated[AuditStatus, _AsLiteral()]
BillingStatusField = Annotated[BillingStatus, _AsLiteral()]
BillingTrackField = Annotated[BillingTrack, _AsLiteral()]
LedgerKindField = Annotated[LedgerKind, _AsLiteral()]
JobStateField = Annotated[JobState, _AsLiteral()]
CustomDomainStatusField = Annotated[CustomDomainStatus, _AsLiteral()]
ConditionTypeField = Annotated[ConditionType, _AsLiteral()]
ConditionStatusField = Annotated[ConditionStatus, _AsLiteral()]


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


def context_of(info: ValidationInfo) -> ValidationContext:
    if not isinstance(info.context, ValidationContext):
        raise TypeError("validating this model needs a ValidationContext")
    return info.context


def integral(value: Any) -> Any:
    # JSON has one number type: 3000.0 is the integer 3000 to JSON Schema (and to a fuzzer).
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A JSON integer: strict (no "80", no true) but 3000.0 counts.
JsonInt = Annotated[StrictInt, BeforeValidator(integral)]

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


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None
    request_id: str | None = None


class ErrorOut(BaseModel):
    error: ErrorBody
